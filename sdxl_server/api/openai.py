"""The OpenAI Images API: ``POST /v1/images/generations`` and ``GET /v1/models``.

Clients written for OpenAI (the ``openai`` package, Open WebUI, LibreChat, ...) work by changing
only their base URL to ``http://host:8001/v1``. Requests are translated into our own request and
validated by the same schema, so the limits, queue and outputs are the server's. Errors under
``/v1/`` take OpenAI's shape (:func:`error_body`). Never imports torch.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..errors import ValidationFailed
from . import keys
from .forwarded import public_base
from .loras import with_loras
from .models import openai_model, usable_entries, with_model
from .schemas import StrictInteger, generate_request_fields, to_params
from .validation import read_json_object
from .validation import validate as validate_fields

SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # fullmatch: ASCII digits only, no trailing newline
# Documented fields that mean nothing here; accepted and ignored so clients need no change.
IGNORED = ("quality", "style", "user", "background", "moderation", "output_format", "output_compression", "partial_images")
# Our own fields a client may add (an extension): passed through to the core request.
EXTENSIONS = ("negative_prompt", "steps", "guidance_scale", "seed", "scheduler")


class ImagesRequestSchema(Schema):
    """OpenAI's image generation request (the fields this server uses; see ``IGNORED``)."""

    class Meta:
        unknown = EXCLUDE  # checked by hand below, to name the field the way OpenAI does

    prompt = fields.String(required=True, metadata={"description": "What to draw."})
    n = StrictInteger(load_default=1, metadata={"description": "How many images (1 to MAX_BATCH)."})
    size = fields.String(
        load_default="auto", metadata={"description": "'WIDTHxHEIGHT' within the server's limits (multiples of 8), or 'auto'."}
    )
    response_format = fields.String(load_default="url", validate=validate.OneOf(["url", "b64_json"]))
    model = fields.String(load_default=None, allow_none=True, metadata={
        "description": "A local model's name (GET /v1/models); dall-e-* and gpt-image-* mean the default model."})
    stream = fields.Boolean(load_default=False)

    @validates_schema
    def _no_streaming(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("stream"):
            raise ValidationError("streaming is not supported: follow progress over /api/v1/ws instead", "stream")


def request_schema_for_spec(settings) -> Schema:
    """Every field this route accepts, with the server's limits, for the OpenAPI document."""
    core = generate_request_fields(settings)
    spec_fields = {
        **{name: field for name, field in ImagesRequestSchema().fields.items()},
        "prompt": core["prompt"],
        "n": StrictInteger(load_default=1, validate=validate.Range(min=1, max=settings.max_batch)),
        "size": fields.String(load_default="auto", validate=validate.Regexp(r"^(auto|[0-9]+x[0-9]+)$"),
                              metadata={"description": ImagesRequestSchema().fields["size"].metadata["description"]}),
        **{name: fields.Raw(metadata={"description": "Accepted and ignored."}) for name in IGNORED},
        **{name: core[name] for name in EXTENSIONS},
    }
    return Schema.from_dict(spec_fields, name="OpenAIImagesRequest")(unknown=RAISE)


def _core_request(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Our request for OpenAI's ``body``, and the response format."""
    known = set(ImagesRequestSchema().fields) | set(IGNORED) | set(EXTENSIONS)
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValidationFailed(f"Unrecognized request argument supplied: {unknown[0]}", fields={unknown[0]: ["Unknown field."]})
    request = validate_fields(ImagesRequestSchema(), {k: v for k, v in body.items() if k not in IGNORED and k not in EXTENSIONS})
    core: dict[str, Any] = {"prompt": request["prompt"], "num_images": request["n"], "model": openai_model(request["model"])}
    core.update({name: body[name] for name in EXTENSIONS if name in body})
    if request["size"] != "auto":
        match = SIZE.fullmatch(request["size"])
        if not match:
            raise ValidationFailed(
                f"size must be 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto', not {request['size']!r}",
                fields={"size": ["Not a size like 1024x1024."]},
            )
        core["width"], core["height"] = int(match.group(1)), int(match.group(2))
    return core, request["response_format"]


SIZE_NAMES = {"width": "size", "height": "size", "num_images": "n"}


async def images_generations(request: web.Request) -> web.Response:
    """``POST /v1/images/generations``: ``{created, data: [{url} | {b64_json}]}``."""
    app = request.app
    body = await read_json_object(request)
    core, response_format = _core_request(body)
    params = await with_model(app, await with_loras(app, to_params(validate_fields(app[keys.GENERATE_SCHEMA], core, SIZE_NAMES))))
    return await images_response(request, await app[keys.QUEUE].generate(params), response_format)


async def images_response(request: web.Request, result: dict[str, Any], response_format: str) -> web.Response:
    """A finished job as OpenAI answers: ``{created, data: [{url} | {b64_json}]}``."""
    app = request.app
    images = result.get("images") or [{"id": result["id"], "image_url": result["image_url"]}]
    if response_format == "b64_json":
        data = [{"b64_json": blob} for blob in await app[keys.STORE].images_base64([image["id"] for image in images])]
    else:
        base = public_base(request)  # PUBLIC_URL, else the scheme and host as trusted proxies forward them
        data = [{"url": base + image["image_url"]} for image in images]
    created = int((await app[keys.QUEUE].find(result["id"])).created_at)
    return web.json_response({"created": created, "data": data})


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models``: every usable local model."""
    return web.json_response({"object": "list", "data": [
        {"id": entry.name, "object": "model", "created": 0, "owned_by": "sdxl_server"} for entry in usable_entries(request.app)
    ]})


_TYPES = {401: "invalid_request_error", 429: "rate_limit_error"}
_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


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
    return status, {"error": {"message": message, "type": kind, "param": param, "code": _CODES.get(status, body["error"])}}

