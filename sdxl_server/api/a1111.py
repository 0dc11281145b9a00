"""A subset of AUTOMATIC1111's web UI API (``/sdapi/v1/...``), for tools written against it.

``txt2img`` is translated into our own request and validated by the same schema, so limits,
queue and outputs are shared; ``progress`` reports the caller's running job; ``interrupt`` stops it.
``refiner_checkpoint`` (any name: the server has one refiner, REFINER_ID) with ``refiner_switch_at``
runs the refiner as an ensemble; ``styles`` come from STYLES_FILE (:mod:`.styles`); hires fix
(``enable_hr``...) is read by :mod:`.a1111_hires`. Scripts, face restoration and the like are not
supported: their fields are accepted, and when sent with a value that would change the image they are named in ``info["warnings"]`` (see
:mod:`.applied`); fields A1111 does not know are ignored.
Never imports torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any

from aiohttp import web
from marshmallow import EXCLUDE, Schema, fields, missing
from marshmallow import validate as validate_

from ..errors import Conflict, ValidationFailed
from ..jobs.outputs import parameters_text
from ..params import GenerationParams
from ..sampling import SAMPLERS, SCHEDULES
from . import keys
from .a1111_controlnet import WHERE, a1111_units, detected_maps
from .a1111_hires import HIRES_NAMES, hires_group, hires_info
from .applied import A1111_TXT2IMG, a1111_warnings
from .a1111_samplers import a1111_given, a1111_pair, sampler_choices, samplers, schedulers  # noqa: F401 (routes)
from .a1111_options import OptionsSchema, default_clip_skip, get_options, request_clip_skip, set_options  # noqa: F401 (routes, openapi)
from .batches import generate_images
from .image_inputs import stored_inputs
from .loras import with_loras
from .models import usable_entries, with_model
from .ownership import own_active
from .presets import with_presets
from .schemas import StrictFloat, StrictInteger, generate_request_fields, to_params
from .sizes import fit_size
from .validation import read_json_object, validate

PROGRESS_PREVIEW_WINDOW_S = 30.0  # previews are made while someone polled /progress this recently

NAMES = {"guidance_scale": "cfg_scale", "sampler": "sampler_name", "schedule": "scheduler", "num_images": "batch_size",
         "refiner": "refiner_checkpoint", "model": "override_settings", "controlnet": WHERE,
         "ip_adapter": WHERE, **HIRES_NAMES}


class Number(fields.Field):
    """A number as A1111 (FastAPI/pydantic) reads one: a JSON number or a numeric string (``"7"``),
    ``null`` meaning the default; an integer field takes ``7.0`` (and truncates ``7.5``, as pydantic
    1 does). Booleans, NaN and infinity are refused."""

    default_error_messages = {"invalid": "Not a valid number."}

    def __init__(self, *, as_float: bool = False, **kwargs: Any) -> None:
        super().__init__(allow_none=True, **kwargs)
        self.as_float = as_float

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.make_error("invalid")
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (ValueError, OverflowError):
            raise self.make_error("invalid") from None
        if not math.isfinite(number):
            raise self.make_error("invalid")
        return number if self.as_float else int(number)


class Txt2ImgSchema(Schema):
    """The A1111 ``txt2img`` fields this server uses; any other field is ignored."""

    class Meta:
        unknown = EXCLUDE

    prompt = fields.String(load_default="", allow_none=True)
    negative_prompt = fields.String(load_default="", allow_none=True)
    width = Number(load_default=None)
    height = Number(load_default=None)
    steps = Number(load_default=None)
    cfg_scale = Number(load_default=None, as_float=True)
    seed = Number(load_default=-1, metadata={"description": "-1 or null: random."})
    sampler_name = fields.String(load_default=None, allow_none=True)
    sampler_index = fields.String(load_default=None, allow_none=True, metadata={"description": "Older name of sampler_name."})
    scheduler = fields.String(load_default=None, allow_none=True, metadata={"description": "Schedule type: a name or label of GET /sdapi/v1/schedulers; 'Automatic' or absent: the sampler's own."})
    batch_size = Number(load_default=1, validate=validate_.Range(min=1))
    n_iter = Number(load_default=1, validate=validate_.Range(min=1))
    send_images = fields.Boolean(load_default=True, allow_none=True)
    refiner_checkpoint = fields.String(load_default=None, allow_none=True,
                                       metadata={"description": "Any refiner name runs the configured refiner; empty or 'None': no refiner."})
    refiner_switch_at = Number(load_default=0.8, as_float=True)
    styles = fields.List(fields.String(), load_default=None, allow_none=True,
                         metadata={"description": "Names from GET /sdapi/v1/prompt-styles, applied in order."})


class ProgressQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    skip_current_image = fields.Boolean(load_default=False, metadata={"description": "Leave out the preview."})


def validate_a1111(schema: Schema, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` loaded by one of the A1111 schemas, ``null`` read as the field's default, as
    FastAPI does for A1111's optional fields (None stays only where the default is None)."""
    loaded = validate(schema, body)
    for name, field in schema.fields.items():
        if name in loaded and loaded[name] is None and field.load_default not in (None, missing):
            loaded[name] = field.load_default
    return loaded


def request_schema_for_spec(settings) -> Schema:
    """The txt2img fields with the server's limits, for the OpenAPI document (other fields are
    accepted and ignored; ``batch_size`` x ``n_iter`` may be at most ``MAX_BATCH``)."""
    core = generate_request_fields(settings)
    spec_fields = {
        **Txt2ImgSchema().fields,
        **{name: core[name] for name in ("prompt", "negative_prompt", "width", "height", "steps", "seed", "refiner_switch_at")},
        "cfg_scale": core["guidance_scale"],
        "batch_size": StrictInteger(load_default=1, validate=validate_.Range(min=1, max=settings.max_batch)),
        "n_iter": StrictInteger(load_default=1, validate=validate_.Range(min=1, max=settings.max_batch)),
        "sampler_name": fields.String(
            load_default=None, allow_none=True, validate=validate_.OneOf(sampler_choices()),
        ),
    }
    return Schema.from_dict(spec_fields, name="Txt2ImgRequest")(unknown=EXCLUDE)


def core_request(body: dict[str, Any], settings, clip_skip: int = 1) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Our request for an A1111 body, the body as read, and the notes for ``info`` (what was changed);
    ``clip_skip``: the server's ``CLIP_stop_at_last_layers``, for a body that sets none."""
    request = validate_a1111(Txt2ImgSchema(), body)
    notes: list[str] = []
    core: dict[str, Any] = {
        "prompt": request["prompt"],
        "negative_prompt": request["negative_prompt"],
        "seed": -1 if request["seed"] is None else request["seed"],
        **dict(zip(("sampler", "schedule"), a1111_pair(request["sampler_name"] or request["sampler_index"], request["scheduler"], notes))),
        "num_images": min(request["batch_size"] * request["n_iter"], settings.max_batch),
        "clip_skip": request_clip_skip(body, clip_skip),
        "styles": request["styles"] or [],
    }
    overrides = body.get("override_settings")
    if isinstance(overrides, dict) and isinstance(overrides.get("sd_model_checkpoint"), str):
        core["model"] = overrides["sd_model_checkpoint"]  # this job only, as A1111 does
    if request["cfg_scale"] is not None:
        core["guidance_scale"] = request["cfg_scale"]
    if request["steps"] is not None:
        core["steps"] = request["steps"]
        if request["steps"] > settings.max_steps:
            core["steps"] = settings.max_steps
            notes.append(f"steps {request['steps']} lowered to {settings.max_steps} (MAX_STEPS)")
    if request["width"] is not None or request["height"] is not None:
        asked = (settings.default_width if request["width"] is None else request["width"],
                 settings.default_height if request["height"] is None else request["height"])
        if min(asked) < 1:
            raise ValidationFailed("width and height must be positive", fields={
                name: ["Must be at least 1."] for name in ("width", "height") if request[name] is not None and request[name] < 1})
        core["width"], core["height"] = fit_size(*asked, settings.max_width, settings.max_height)
        if (core["width"], core["height"]) != asked:
            notes.append(f"size {asked[0]}x{asked[1]} made as {core['width']}x{core['height']} (the server's limits)")
    if (request["refiner_checkpoint"] or "None").strip() not in ("", "None"):
        core.update(refiner="ensemble", refiner_switch_at=request["refiner_switch_at"])
    return core, request, notes


def _validated(app: web.Application, core: dict[str, Any]) -> dict[str, Any]:
    """``core`` checked by our own schema; an empty prompt is allowed here, as in A1111."""
    if core["prompt"].strip():
        return validate(app[keys.GENERATE_SCHEMA], core, NAMES)
    return {**validate(app[keys.GENERATE_SCHEMA], {**core, "prompt": "-"}, NAMES), "prompt": core["prompt"]}


async def txt2img(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/txt2img``: ``{images: [base64 PNG], parameters, info}``; ControlNet units
    (``alwayson_scripts.controlnet``) guide it and their detected maps follow the images."""
    app = request.app
    body = await read_json_object(request, untyped_is_json=True)
    core, original, notes = core_request(body, app[keys.SETTINGS], default_clip_skip(app))
    warnings = a1111_warnings(A1111_TXT2IMG, body)
    control = await a1111_units(app, body, None, notes, warnings)
    core.update(hires_group(body, notes))
    given = [name for name in ("width", "height") if original[name] is not None]
    async with stored_inputs(app, _validated(app, control.into(core)), given, names=NAMES) as data:
        return await respond(request, to_params(data), original, notes, warnings, control.maps)


async def respond(request: web.Request, params: GenerationParams, original: dict[str, Any], notes: list[str],
                  warnings: list[str] | None = None, detected: list[int] | None = None) -> web.Response:
    """Run ``params`` (its LoRAs and model checked; ``batch_size * n_iter`` images, interrupted ones
    answered with what was made) and answer as A1111 does: ``{images, parameters, info}``
    (``original``: the A1111 request as loaded, echoed in ``parameters``; ``notes``: what was changed;
    ``warnings``: what was asked for and not applied, in ``info`` and each image's metadata;
    ``detected``: the ControlNet units whose control maps follow the images, as the extension
    answers; call it while the request holds its inputs)."""
    app = request.app
    warnings = warnings or []
    params = await with_model(app, await with_loras(app, params), "override_settings")
    params = await with_presets(app, params, a1111_given(original), notes)
    count = original["batch_size"] * original["n_iter"]
    most = app[keys.SETTINGS].max_request_images
    if count > most:
        notes.append(f"batch_size x n_iter = {count} lowered to {most} images (MAX_REQUEST_IMAGES)")
        count = most
    made = await generate_images(request, params, count, partial=True, skipped=app[keys.A1111_SKIPPED], names=NAMES,
                                 track=app[keys.A1111_JOBS], warnings=warnings)
    metas = [image["meta"] for image in made.images]
    if made.interrupted:
        stopped = [meta["interrupted_at_step"] for meta in metas if "interrupted_at_step" in meta]
        notes.append(f"interrupted: {len(made.images)} of {count} images made"
                     + (f", the last stopped at step {stopped[-1]} of {params.total_steps}" if stopped else ""))
    encoded = await app[keys.STORE].images_base64([i["id"] for i in made.images]) if original["send_images"] else []
    if original["send_images"] and detected:
        encoded += await detected_maps(app, [params.inputs[f"control{index}"] for index in detected])
    first = metas[0] if metas else {"seed": params.seed, "sampler_name": SAMPLERS[params.sampler].label,
                                    "schedule_type": SCHEDULES[params.schedule].label,
                                    "model_id": params.model or app[keys.MODELS].default_name}
    created = (await app[keys.QUEUE].find(made.first_job)).created_at
    info = _info(params, original, metas, first, notes, warnings, created)
    parameters = {
        **{k: v for k, v in original.items()},
        "width": params.width, "height": params.height, "steps": params.steps, "cfg_scale": params.guidance_scale,
        "seed": first["seed"], "sampler_name": first["sampler_name"],
    }
    return web.json_response({"images": encoded, "parameters": parameters, "info": json.dumps(info)})


def _info(params: GenerationParams, original: dict[str, Any], metas: list[dict[str, Any]], first: dict[str, Any],
          notes: list[str], warnings: list[str], created: float) -> dict[str, Any]:
    """A1111's ``info`` (sent as JSON text): what was made, as A1111 reports it."""
    hires = hires_info(params)
    info = {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * len(metas),
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": [params.negative_prompt] * len(metas),
        "seed": first["seed"],
        "all_seeds": [meta["seed"] for meta in metas],
        "subseed": -1,
        "all_subseeds": [-1] * len(metas),
        "subseed_strength": 0,
        "width": params.width,
        "height": params.height,
        "sampler_name": first["sampler_name"],
        "cfg_scale": params.guidance_scale,
        "steps": params.steps,
        "batch_size": original["batch_size"],
        "restore_faces": False,
        "sd_model_name": first["model_id"],
        "sd_model_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": params.image.strength if params.mode != "txt2img" else 0,
        "extra_generation_params": {**hires.pop("extra_generation_params", {}),
                                    **({"Schedule type": first["schedule_type"]}
                                       if first.get("schedule_type", "Automatic") != "Automatic" else {}),
                                    **({"Server notes": "; ".join(notes)} if notes else {})},
        "index_of_first_image": 0,
        "infotexts": [parameters_text(meta) for meta in metas],
        "styles": list(params.styles),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(created)),
        "clip_skip": params.clip_skip,
        "is_using_inpainting_conditioning": False,
        "mask_blur": params.inpaint.mask_blur if params.mode == "inpaint" else None,
        "version": "sdxl_server",
        "warnings": warnings,
    }
    return {**info, **hires}


def progress_polled_recently(app: web.Application) -> bool:
    """Whether previews should be made for ``/progress`` pollers (read from the worker thread)."""
    return app[keys.A1111_PROGRESS_POLL].at > time.monotonic() - PROGRESS_PREVIEW_WINDOW_S


async def progress(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/progress``: the caller's running job's progress, ETA and latest preview
    (any owner's, for admin), and how many of its jobs are queued."""
    app = request.app
    app[keys.A1111_PROGRESS_POLL].at = time.monotonic()
    queue = app[keys.QUEUE]
    own = own_active(request)
    job = next((j for j in own if j in queue.running_jobs), None)
    skip_image = validate(ProgressQuerySchema(), dict(request.query))["skip_current_image"]
    state = {
        "skipped": False,
        "interrupted": bool(job and (job.cancel_requested() or job.stop_early_requested())),
        "stopping_generation": False,
        "job": job.id if job else "",
        "job_count": len(own),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(job.created_at)) if job else "0",
        "job_no": 0,
        "sampling_step": job.step if job else 0,
        "sampling_steps": job.total_steps if job else 0,
    }
    eta = queue.eta_seconds(job) if job else None
    image = None
    if job and job.preview and not skip_image:
        image = job.preview.split(",", 1)[1]  # base64 of the JPEG, without the data-URL prefix
    return web.json_response(
        {
            "progress": job.progress if job else 0.0,
            "eta_relative": round(eta, 2) if eta is not None else 0.0,
            "state": state,
            "current_image": image,
            "textinfo": None,
        }
    )


async def _stop_running(request: web.Request) -> str | None:
    """Stop the caller's running job as A1111 does: denoising ends at its next step and the image
    is made from the latents so far (where the backend cannot, the job is cancelled). Its id, or
    None. Only a job an A1111 request waits for: other clients' jobs (the page, OpenAI, another
    key's) are theirs to cancel, and SillyTavern interrupts whenever its own client goes away."""
    app = request.app
    queue = app[keys.QUEUE]
    job = next((j for j in own_active(request) if j in queue.running_jobs and j.id in app[keys.A1111_JOBS]), None)
    if job is None:
        return None
    if not queue.stop_early(job):
        with contextlib.suppress(Conflict):  # interrupting twice is fine, as in A1111
            await queue.cancel(job.id)
    return job.id


async def interrupt(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/interrupt``: the running job ends at its next step with the image so far;
    the request that waits for it answers with what was made and runs no more batches."""
    job_id = await _stop_running(request)
    request.app[keys.A1111_SKIPPED].discard(job_id)  # skipped, then interrupted: the interrupt wins
    return web.json_response(None)


async def skip(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/skip``: like interrupt, but the request goes on with its next batch, if any."""
    job_id = await _stop_running(request)
    if job_id is not None:
        request.app[keys.A1111_SKIPPED].add(job_id)
    return web.json_response(None)


async def sd_models(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/sd-models``: every usable local model (``title`` is what options take)."""
    return web.json_response([entry.a1111() for entry in usable_entries(request.app)])
