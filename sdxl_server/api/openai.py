"""The OpenAI Images API: ``POST /v1/images/generations`` and ``GET /v1/models``.

Clients written for OpenAI (the ``openai`` package, Open WebUI, LibreChat, ...) work by changing
only their base URL to ``http://host:8001/v1``. Requests are translated into our own request and
validated by the same schema, so the limits, queue and outputs are the server's. Errors under
``/v1/`` take OpenAI's shape (:func:`error_body`). Never imports torch.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..errors import ValidationFailed
from ..params import GenerationParams
from ..pipeline.model_catalog import MAX_MODEL_NAME
from . import keys
from .applied import OPENAI_GENERATIONS, check_openai
from .batches import generate_images
from .output_urls import absolute_url
from .ownership import present
from .image_formats import FORMATS, reencode
from .loras import prompt_as_used, with_loras
from .models import openai_model, usable_entries, with_model
from .presets import given_fields, with_presets
from .schemas import StrictInteger, generate_request_fields, to_params
from .sizes import fit_size, parse_size
from .validation import read_json_object
from .validation import validate as validate_fields

log = logging.getLogger(__name__)

MAX_N = 10  # OpenAI's own limit; above MAX_BATCH the images come from several pipeline calls
MAX_PROMPT = 4000  # DALL·E 3's limit; what exceeds MAX_PROMPT_LENGTH is cut (and logged)
# Documented fields that mean nothing here; accepted and ignored so clients need no change.
IGNORED = ("style", "user", "moderation")
# Our own fields a client may add (an extension): passed through to the core request.
EXTENSIONS = ("negative_prompt", "steps", "guidance_scale", "seed", "scheduler", "sampler", "schedule")


class ImagesRequestSchema(Schema):
    """OpenAI's image generation request (the fields this server uses; see ``IGNORED``). ``null``
    means the default for every optional field, as OpenAI's own server reads it."""

    class Meta:
        unknown = EXCLUDE  # newer OpenAI fields are ignored (and logged) by images_generations

    prompt = fields.String(required=True, validate=validate.Length(max=MAX_PROMPT), metadata={
        "description": f"What to draw (at most {MAX_PROMPT} characters; beyond MAX_PROMPT_LENGTH cut to it)."})
    n = StrictInteger(load_default=1, allow_none=True, validate=validate.Range(min=1, max=MAX_N),
                      metadata={"description": f"How many images (1 to {MAX_N}; in batches of MAX_BATCH)."})
    size = fields.String(load_default="auto", allow_none=True, metadata={
        "description": "'WIDTHxHEIGHT' (fitted into the server's limits, keeping the aspect ratio; "
                       "the size made is the response's 'size'), or 'auto' for the defaults."})
    response_format = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(["url", "b64_json"]),
                                    metadata={"description": "url, or b64_json (the default for gpt-image-* models)."})
    model = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=MAX_MODEL_NAME), metadata={
        "description": "A local model's name (GET /v1/models); dall-e-* and gpt-image-* mean the default model."})
    output_format = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(FORMATS),
                                  metadata={"description": "png (default), jpeg or webp; b64_json only (URLs are PNGs)."})
    output_compression = StrictInteger(load_default=None, allow_none=True, validate=validate.Range(min=0, max=100),
                                       metadata={"description": "jpeg/webp quality, 0 to 100 (default 100)."})
    quality = fields.String(load_default=None, allow_none=True, metadata={"description": "Echoed; no effect."})
    background = fields.String(load_default=None, allow_none=True,
                               metadata={"description": "'opaque' or 'auto' (echoed as 'opaque'); 'transparent' is refused."})
    stream = fields.Boolean(load_default=False, allow_none=True, metadata={
        "description": "true: answer with server-sent events as OpenAI streams (text/event-stream): "
                       "partial images, then the image (n must be 1)."})
    partial_images = StrictInteger(load_default=0, allow_none=True, validate=validate.Range(min=0, max=3), metadata={
        "description": "With stream: how many partial images (0 to 3) are sent, from the step previews."})

    @validates_schema
    def _one_image_when_streaming(self, data: dict[str, Any], **kwargs: Any) -> None:
        """A streamed answer carries one image: OpenAI's completed event has no index to tell several apart."""
        if data.get("stream") and (data.get("n") or 1) > 1:
            raise ValidationError("a streamed answer carries one image: send n=1, or stream false", "stream")


def request_schema_for_spec(settings) -> Schema:
    """Every field this route accepts, with the server's limits, for the OpenAPI document."""
    core = generate_request_fields(settings)
    spec_fields = {
        **{name: field for name, field in ImagesRequestSchema().fields.items()},
        **{name: fields.Raw(metadata={"description": "Accepted and ignored."}) for name in IGNORED},
        **{name: core[name] for name in EXTENSIONS},
    }
    return Schema.from_dict(spec_fields, name="OpenAIImagesRequest")(unknown=RAISE)


@dataclass(frozen=True)
class ImagesAsk:
    """An OpenAI request, read: our core request, how many images, and how to answer."""

    core: dict[str, Any]
    count: int
    response_format: str
    output_format: str
    compression: int
    quality: str
    background: str
    stream: bool = False
    partial_images: int = 0


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _read_request(body: dict[str, Any], settings) -> ImagesAsk:
    """Our request for OpenAI's ``body``, and how to answer it."""
    check_openai(OPENAI_GENERATIONS, body)
    unknown = sorted(set(body) - set(ImagesRequestSchema().fields) - set(IGNORED) - set(EXTENSIONS))
    if unknown:
        log.info("OpenAI images request: ignoring fields this server does not know: %s", ", ".join(unknown[:20]))
    request = validate_fields(ImagesRequestSchema(), {k: v for k, v in body.items() if k not in IGNORED and k not in EXTENSIONS})
    prompt = request["prompt"]
    if len(prompt) > settings.max_prompt_length:
        log.info("OpenAI images request: prompt of %d characters cut to MAX_PROMPT_LENGTH (%d)", len(prompt), settings.max_prompt_length)
        prompt = prompt[: settings.max_prompt_length]
    count = _default(request["n"], 1)
    if count > settings.max_request_images:
        message = f"At most {settings.max_request_images} images per request (MAX_REQUEST_IMAGES)."
        raise ValidationFailed(f"n: {message}", fields={"n": [message]})
    core: dict[str, Any] = {"prompt": prompt, "num_images": min(count, settings.max_batch), "model": openai_model(request["model"])}
    core.update({name: body[name] for name in EXTENSIONS if name in body})
    size = _default(request["size"], "auto")
    if size != "auto":
        asked = parse_size(size)
        if asked is None:
            raise ValidationFailed(
                f"size must be 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto', not {size[:40]!r}",
                fields={"size": ["Not a size like 1024x1024."]},
            )
        core["width"], core["height"] = fit_size(*asked, settings.max_width, settings.max_height, SIZE_NAMES)
        if (core["width"], core["height"]) != asked:
            log.info("OpenAI images request: size %dx%d made as %dx%d (the server's limits)", *asked, core["width"], core["height"])
    return ImagesAsk(core, count, **how_to_answer(request))


# The fields that say how to answer, shared by every images route (JSON and multipart).
ANSWER_FIELDS = ("response_format", "model", "output_format", "output_compression", "quality", "background")
STREAM_FIELDS = ("stream", "partial_images", "n")  # streaming (generations and edits): n=1 only


def how_to_answer(request: dict[str, Any]) -> dict[str, Any]:
    """:class:`ImagesAsk`'s answer fields for a request's (validated) ``ANSWER_FIELDS``: base64 by
    default for ``gpt-image-*`` models (OpenAI answers them so, and their clients read only
    ``b64_json``), else a URL; other formats than PNG for base64 only."""
    gpt_image = (request.get("model") or "").startswith("gpt-image")
    stream = bool(request.get("stream"))  # streamed events always carry base64
    response_format = "b64_json" if stream else _default(request.get("response_format"), "b64_json" if gpt_image else "url")
    output_format = _default(request.get("output_format"), "png") if response_format == "b64_json" else "png"
    return {"response_format": response_format, "output_format": output_format,
            "compression": _default(request.get("output_compression"), 100),
            "quality": _default(request.get("quality"), "auto"), "background": "opaque",
            "stream": stream, "partial_images": _default(request.get("partial_images"), 0)}


SIZE_NAMES = {"width": "size", "height": "size", "num_images": "n"}


async def base64_images(app: web.Application, ids: list[str], output_format: str, compression: int) -> list[str]:
    """The stored images ``ids`` in base64, re-encoded off the event loop unless PNG is asked (as stored)."""
    if output_format == "png":
        return await app[keys.STORE].images_base64(ids)
    loop = asyncio.get_running_loop()
    store = app[keys.STORE]
    blobs = await asyncio.gather(*(loop.run_in_executor(
        None, lambda i=i: reencode(store.read_image(i), output_format, compression)) for i in ids))
    return [base64.b64encode(blob).decode("ascii") for blob in blobs]


async def images_generations(request: web.Request) -> web.StreamResponse:
    """``POST /v1/images/generations``: ``{created, data: [{url} | {b64_json}], size, output_format, ...}``."""
    app = request.app
    asked = _read_request(await read_json_object(request), app[keys.SETTINGS])
    params = await with_model(app, await with_loras(app, to_params(validate_fields(app[keys.GENERATE_SCHEMA], asked.core, SIZE_NAMES))))
    params = await with_presets(app, params, given_fields(asked.core))
    if asked.stream:
        from .openai_stream import stream_images  # which imports this module's helpers

        return await stream_images(request, params, asked, "image_generation")
    return await images_response(request, params, asked)


async def images_response(request: web.Request, params: GenerationParams, asked: ImagesAsk) -> web.Response:
    """Make ``asked.count`` images like ``params`` (in batches of MAX_BATCH) and answer as OpenAI
    does: ``{created, data: [{url} | {b64_json}], size, output_format, quality, background}``."""
    app = request.app
    made = await generate_images(request, params, asked.count, names=SIZE_NAMES)
    images, job_id = made.images, made.first_job
    if asked.response_format == "b64_json":
        blobs = await base64_images(app, [image["id"] for image in images], asked.output_format, asked.compression)
        data = [{"b64_json": blob} for blob in blobs]
    else:
        # the object store's URL or a path signed with keys; a path is joined to PUBLIC_URL (else the scheme
        # and host as trusted proxies forward them)
        data = [{"url": absolute_url(request, image["image_url"])} for image in present(app, images)]
    used = prompt_as_used(params.prompt, app[keys.SETTINGS].prompt_syntax)
    data = [{**item, "revised_prompt": used} for item in data]  # as DALL-E 3 answers (Home Assistant reads it)
    created = int((await app[keys.QUEUE].find(job_id)).created_at)
    return web.json_response({
        "created": created, "data": data, "size": f"{params.width}x{params.height}",
        "output_format": asked.output_format, "quality": asked.quality, "background": asked.background,
    })


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models``: every usable local model."""
    return web.json_response({"object": "list", "data": [
        {"id": entry.name, "object": "model", "created": 0, "owned_by": "sdxl_server"} for entry in usable_entries(request.app)
    ]})


_TYPES = {401: "invalid_request_error", 429: "rate_limit_error"}
_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
_KEPT = ("limit", "resets_at")


def error_body(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Our error as OpenAI's ``{error: {message, type, param, code}}``, with OpenAI's status codes
    (invalid fields are 400 there, not 422)."""
    if status == 422:
        status = 400
    fields_ = body.get("fields") or {}
    param = next(iter(fields_), None)
    message = body["message"]
    if param is not None and message.startswith("invalid request"):
        message = f"{param}: {' '.join(fields_[param])}"
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": message, "type": kind, "param": param, "code": _CODES.get(status, body["error"])}
    error.update({name: body[name] for name in _KEPT if name in body})  # a key's limit, and when it resets
    return status, {"error": error}

