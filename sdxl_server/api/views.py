"""HTTP handlers: thin, they validate, call the queue or the store, and shape the reply.

Errors are raised, never formatted here (see :mod:`sdxl_server.api.middleware`). Never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import hdrs, web

from .. import __version__
from ..errors import Conflict, Forbidden, NotFound, ValidationFailed
from ..jobs.states import JOB_STATUSES, JobStatus
from ..jobs.webhooks import delivery_state
from ..params import MAX_SEED, GenerationParams
from ..pipeline.preprocessors import runnable
from ..sampling import AUTOMATIC, DEFAULT_SAMPLER, SAMPLERS, SCHEDULES, combined_label, sampler_names
from . import image_inputs, keys
from .image_inputs import stored_inputs
from .loras import with_loras
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .models import with_model
from .presets import given_fields, with_presets
from .openapi import with_local_names
from .ownership import job_view, may_see, own_job, present
from .route_table import Scope
from .identity import IDENTITY
from .schemas import GUIDANCE_MAX, GUIDANCE_MIN, MIN_SIZE, JobListQuerySchema, to_params
from .styles import current_styles
from .validation import read_json_object, validate
from .webhook_targets import job_webhook

CANCEL_WAIT_S = 10.0




def _health(app: web.Application) -> tuple[int, dict[str, Any]]:
    queue = app[keys.QUEUE]
    info = app[keys.STATUS].latest.described  # as the worker thread last saw the engine: no torch here
    state = info["model"]["state"]
    if state == "failed" or queue.problem:
        status = "error"
    elif state == "loading" or (state == "not_loaded" and app[keys.SETTINGS].preload):
        status = "loading"
    elif not queue.accepting:
        status = "shutting_down"
    else:
        status = "ok"
    body = {
        "status": status,
        "version": __version__,
        "auth_required": bool(app[keys.SETTINGS].api_key) or app[keys.KEY_RING].in_use,
        **info,
        "queue": {
            "running": queue.running.id if queue.running else None,
            "running_jobs": [job.id for job in queue.running_jobs],
            "concurrency": queue.concurrency,
            "waiting": queue.waiting,
            "capacity": queue.capacity,
            "eta_s": queue.eta_seconds(None),
            "problem": queue.problem,
        },
    }
    return (200 if status == "ok" else 503), body


# What a caller without the key (when API_KEY is set) sees of /health: readiness, the device and
# the queue's size, never a job id, a prompt, a model's name or location, a LoRA or a file path.
_PUBLIC_HEALTH = ("status", "version", "auth_required", "cuda_available", "device", "dtype", "gpu", "attention", "versions")
_PUBLIC_MODEL = ("tiny", "state", "loaded", "load_seconds")
_PUBLIC_QUEUE = ("concurrency", "waiting", "capacity", "eta_s")


def _public_health(body: dict[str, Any]) -> dict[str, Any]:
    refiner = body.get("refiner")
    return {
        **{name: body[name] for name in _PUBLIC_HEALTH if name in body},
        "model": {name: body["model"][name] for name in _PUBLIC_MODEL},
        "refiner": None if refiner is None else {name: refiner[name] for name in ("state", "loaded")},
        "options": {},
        "queue": {**{name: body["queue"][name] for name in _PUBLIC_QUEUE}, "busy": len(body["queue"]["running_jobs"])},
    }


def _may_read(request: web.Request) -> bool:
    return Scope.READ in request[IDENTITY].scopes


def _by_caller(app: web.Application, also: str = "") -> dict[str, str]:
    """``Vary`` for an answer that depends on the caller's key (when API_KEY is set): a shared
    cache must not give a key holder's answer to anyone else."""
    varies = [also] if also else []
    if app[keys.SETTINGS].api_key or app[keys.KEY_RING].in_use:
        varies += ["Authorization", "X-API-Key"]
    return {hdrs.VARY: ", ".join(varies)} if varies else {}


async def health(request: web.Request) -> web.Response:
    """Readiness: 200 when the model is loaded (or loads on demand), 503 while loading or after a
    failure; all of it for callers who may read the API, the readiness alone for the others; and
    for admin keys, ``KEYS_FILE``'s state (why its latest change was refused, if it was)."""
    status, body = _health(request.app)
    identity = request[IDENTITY]
    if identity.sees_all and request.app[keys.KEY_RING].in_use:
        body["keys_file"] = request.app[keys.KEY_RING].describe()
    elif not identity.sees_all:  # a key learns nothing of other owners' jobs, their ids included
        running = [job for job in request.app[keys.QUEUE].running_jobs if may_see(identity, job)]
        body["queue"] = {**body["queue"], "running": running[0].id if running else None,
                         "running_jobs": [job.id for job in running]}
    return web.json_response(body if _may_read(request) else _public_health(body), status=status,
                             headers=_by_caller(request.app))


async def openapi(request: web.Request) -> web.Response:
    """The API's description; with the local model and LoRA names only for callers who may list
    them (``/api/v1/models`` and ``/api/v1/loras`` need the key when one is set)."""
    app = request.app
    if not _may_read(request):
        return web.json_response(await app[keys.OPENAPI].get(), headers=_by_caller(app))
    loras = [f.name for f in await asyncio.to_thread(app[keys.LORAS].files) if f.problem is None]
    models = [entry.name for entry in app[keys.MODELS].entries() if not entry.broken]
    styles = list((await current_styles(app)).styles)
    controlnets = [f.name for f in await asyncio.to_thread(app[keys.CONTROLNETS].files) if f.problem is None]
    adapters = [f.name for f in await asyncio.to_thread(app[keys.IP_ADAPTERS].files) if f.problem is None]
    modules = list(await asyncio.to_thread(runnable, app[keys.ANNOTATORS]))
    return web.json_response(with_local_names(await app[keys.OPENAPI].get(), models, loras, styles, controlnets, adapters, modules),
                             headers=_by_caller(app))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    return web.Response(body=request.app[keys.METRICS].render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept


async def index(request: web.Request) -> web.StreamResponse:
    """The web page for browsers; a JSON status for everything else (``Vary: Accept`` on both, so
    a cache never gives one to a client that asked for the other)."""
    static_dir = request.app[keys.STATIC_DIR]
    vary = _by_caller(request.app, also="Accept")
    if _wants_html(request) and (static_dir / "index.html").is_file():
        return web.FileResponse(static_dir / "index.html", headers=vary)
    _, health_body = _health(request.app)
    return web.json_response(
        {
            "name": "sdxl_server",
            "version": __version__,
            "status": health_body["status"],
            "model": health_body["model"]["id"] if _may_read(request) else None,
            "endpoints": {
                "generate": "POST /api/v1/generate",
                "info": "GET /api/v1/info",
                "jobs": "POST /api/v1/jobs, GET /api/v1/jobs, GET|DELETE /api/v1/jobs/{id}",
                "websocket": "GET /api/v1/ws?job={id}&preview=1",
                "health": "GET /health",
                "images": "GET /outputs/images/{id}.png",
                "metadata": "GET /outputs/metadata/{id}.json",
            },
        },
        headers=vary,
    )


async def server_info(request: web.Request) -> web.Response:
    """What a client needs to build a form: the model, the limits, the defaults, the samplers."""
    settings = request.app[keys.SETTINGS]
    described = request.app[keys.STATUS].latest.described
    model = described["model"]
    return web.json_response(
        {
            "version": __version__,
            "model": {"id": model["id"], "tiny": model["tiny"], "state": model["state"], "source": model["source"]},
            "models": {
                **described.get("models", {}), "default": request.app[keys.MODELS].default_name,
                "available": [e.name for e in request.app[keys.MODELS].entries() if not e.broken],
            },
            "prompt_syntax": settings.prompt_syntax,
            "refiner": _refiner_summary(described.get("refiner")),
            "limits": {
                "min_size": MIN_SIZE,
                "size_multiple": 8,
                "max_width": settings.max_width,
                "max_height": settings.max_height,
                "max_steps": settings.max_steps,
                "guidance_scale": [GUIDANCE_MIN, GUIDANCE_MAX],
                "max_prompt_length": settings.max_prompt_length,
                "max_seed": MAX_SEED,
                "queue_size": settings.queue_size,
            },
            "defaults": {
                "width": settings.default_width,
                "height": settings.default_height,
                "steps": settings.default_steps,
                "guidance_scale": settings.default_guidance,
                "sampler": DEFAULT_SAMPLER,
                "schedule": AUTOMATIC,
            },
            **_sampling_info(),
            "job_statuses": JOB_STATUSES,
            "terminal_statuses": [status.value for status in JobStatus if status.terminal],
        }
    )


def _sampling_info() -> dict[str, Any]:
    """The samplers and schedule types (and the older field's names) for GET /api/v1/info."""
    return {
        "schedulers": {name: combined_label(name) for name in sampler_names()},
        "samplers": {name: {"label": s.label, "schedules": list(s.schedules)} for name, s in SAMPLERS.items()},
        "schedules": {name: {"label": s.label, "description": s.description} for name, s in SCHEDULES.items()},
    }


def _refiner_summary(refiner: dict[str, Any] | None) -> dict[str, Any] | None:
    """The refiner a page or client may offer (null: none configured)."""
    if refiner is None:
        return None
    return {"id": refiner["id"], "state": refiner["state"], "defaults": {"refiner_switch_at": 0.8, "refiner_strength": 0.3}}


IDEMPOTENCY_KEY = "Idempotency-Key"


def _idempotency(request: web.Request, data: dict[str, Any]) -> dict[str, str | None]:
    """The ``Idempotency-Key`` header and a hash of the validated request it must come with."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return {}
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise ValidationFailed(
            f"{IDEMPOTENCY_KEY} must be 1 to 255 printable ASCII characters",
            fields={IDEMPOTENCY_KEY: ["Not a usable key."]},
        )
    if data.get("seed") == -1:
        data = {**data, "seed": None}  # -1, null and absent all mean "random": one request
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    owner = request[IDENTITY].name  # each key's Idempotency-Keys are its own: another's never replays, nor conflicts
    stored = key if owner is None else f"{owner}\n{key}"  # a newline: never in a header's key
    return {"idempotency_key": stored, "request_hash": hashlib.sha256(canonical.encode()).hexdigest()}


@contextlib.asynccontextmanager
async def _generation_request(request: web.Request) -> AsyncIterator[tuple[dict[str, Any], set[str]]]:
    """The validated request, its images (if any) decoded and stored (named by SHA-256), held
    until the block ends, and the fields it gave (presets fill the others)."""
    body = await read_json_object(request)
    async with stored_inputs(request.app, validate(request.app[keys.GENERATE_SCHEMA], body), body) as data:
        yield data, given_fields(body)


async def _checked_params(request: web.Request, data: dict[str, Any], given: set[str]) -> GenerationParams:
    """The job's parameters for a validated request, its LoRAs and model checked, the presets applied."""
    params = await with_model(request.app, await with_loras(request.app, to_params(data)))
    return await with_presets(request.app, params, given)


async def generate(request: web.Request) -> web.Response:
    """Validate, queue, wait for the image to be saved, and return ``{id, image_url, meta_url, meta}``.
    With an ``Idempotency-Key``, a retry returns the first request's job instead of a new one."""
    async with _generation_request(request) as (data, given):
        job, _ = await image_inputs.submit(
            request, await _checked_params(request, data, given), **_idempotency(request, data), webhook=job_webhook(request, data)
        )
    await job.wait()
    return web.json_response(present(request.app, job.outcome()))


async def submit_job(request: web.Request) -> web.Response:
    """Queue a job and answer at once: 202 with the job and its ``Location``."""
    async with _generation_request(request) as (data, given):
        job, replayed = await image_inputs.submit(
            request, await _checked_params(request, data, given), **_idempotency(request, data), webhook=job_webhook(request, data)
        )
    headers = {"Location": f"/api/v1/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(job_view(request, job), status=200 if replayed else 202, headers=headers)


async def get_job(request: web.Request) -> web.Response:
    """One job of the caller's (any owner's, for admin; another's is 404 as if absent), with its
    webhook's deliveries (if it has one)."""
    job = await own_job(request, request.match_info["job_id"])
    body = job_view(request, job)
    if job.webhook:
        body["webhook"] = await delivery_state(request.app[keys.JOB_STORE], job)
    return web.json_response(body)


async def list_jobs(request: web.Request) -> web.Response:
    """The caller's jobs (every owner's, for admin), newest first, a page at a time
    (``?limit=20&status=succeeded&before=<next_before>``)."""
    query = validate(JobListQuerySchema(), dict(request.query))
    status = JobStatus(query["status"]) if query["status"] else None
    jobs, cursor = await request.app[keys.QUEUE].page(query["limit"], status, query["before"], request[IDENTITY].owner_filter)
    return web.json_response({"jobs": [job_view(request, job) for job in jobs], "next_before": cursor})


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel one job. A queued job is cancelled at once; a running one at its next step, which
    this waits for (up to ``CANCEL_WAIT_S``; after that 202 with ``cancel_requested``)."""
    job = await request.app[keys.QUEUE].cancel(request.match_info["job_id"], request[IDENTITY].owner_filter)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(job.wait()), CANCEL_WAIT_S)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise Conflict(f"job {job.id} {job.status.value} before it could be cancelled")
    return web.json_response(job_view(request, job), status=200 if job.status.terminal else 202)


async def _output_file(request: web.Request, folder: str) -> web.StreamResponse:
    """The file, if the URL may read it (with keys in use, only a signed URL or an admin key,
    checked before the file is looked for, so a refusal never says whether it exists): from local
    disk, or a redirect to the object store's URL for it (public or presigned)."""
    cache = "public, max-age=31536000, immutable"
    signer = request.app.get(keys.URL_SIGNER)
    if signer is not None and not request[IDENTITY].sees_all:
        left = signer.seconds_left(request.path, request.query)
        if left is None:
            raise Forbidden("this output URL is not signed, or its signature is wrong or has expired: "
                            "ask for the job again for a fresh URL")
        cache = f"private, max-age={int(left)}"
    store, filename = request.app[keys.STORE], request.match_info["filename"]
    direct = store.direct_url(folder, filename)
    if direct is not None:
        raise web.HTTPFound(direct, headers={"Cache-Control": "private, no-store"})  # presigned URLs expire
    path = store.servable(folder, filename)
    if path is None:
        raise NotFound("no such output")
    return web.FileResponse(path, headers={"Cache-Control": cache})


async def output_image(request: web.Request) -> web.FileResponse:
    """``/outputs/images/{id}.png``; nothing else under OUTPUT_DIR is ever served."""
    return await _output_file(request, "images")


async def output_metadata(request: web.Request) -> web.FileResponse:
    """``/outputs/metadata/{id}.json``."""
    return await _output_file(request, "metadata")
