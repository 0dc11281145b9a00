"""The OpenAI Images API's multipart routes: ``POST /v1/images/edits`` and ``/v1/images/variations``.

``edits``: ``image`` (or several ``image[]``: the first is the one edited), an optional ``mask``
whose fully transparent pixels mark the area to edit (OpenAI's convention), ``prompt``, ``n``,
``size`` ("auto" or absent: the image's own size, fitted to the limits), ``model`` (as on
generations), and how to answer as on generations (``response_format``, base64 by default for
``gpt-image-*`` models; ``output_format``, ``output_compression``, ``quality``, ``background``), and
``stream`` with ``partial_images`` as OpenAI streams edits (:mod:`.openai_stream`).
Fields this server does not know are ignored with a log line, as on generations. With a mask it is inpainting at ``strength`` 1 (the
area is drawn anew); without one, image to image at 0.75. ``variations``: image to image with an
empty prompt at :data:`VARIATION_STRENGTH`. Our own fields (``negative_prompt``, ``steps``,
``guidance_scale``, ``seed``, ``scheduler``, ``strength``) may be added as extensions. Errors take
OpenAI's shape (see :mod:`.openai`). Never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError
from marshmallow import Schema, fields, validate

from ..errors import InvalidBody, UnsupportedMediaType, ValidationFailed
from . import keys
from .applied import OPENAI_EDITS, OPENAI_VARIATIONS, Rule, check_openai
from .image_inputs import stored_inputs
from .loras import with_loras
from .models import openai_model, with_model
from .openai import (
    ANSWER_FIELDS, IGNORED, SIZE_NAMES, STREAM_FIELDS, ImagesAsk, ImagesRequestSchema, how_to_answer, images_response,
)
from .openai_stream import stream_images
from .presets import given_fields, with_presets
from .schemas import generate_request_fields, to_params
from .sizes import fit_size, parse_size
from .validation import validate as validate_fields

VARIATION_STRENGTH = 0.6
EDIT_STRENGTH = {True: 1.0, False: 0.75}  # with a mask, without one
_TYPED: dict[str, Callable[[str], Any]] = {
    "n": int, "steps": int, "seed": int, "guidance_scale": float, "strength": float, "output_compression": int,
    "partial_images": int,
}
_TEXT = ("prompt", "size", "negative_prompt", "scheduler", "sampler", "schedule", "stream", *ANSWER_FIELDS)
_FILES = ("image", "image[]", "mask")
_IGNORED = (*IGNORED, "input_fidelity")

log = logging.getLogger(__name__)


def _invalid(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{name}: {message}", fields={name: [message]})


async def _read_form(request: web.Request, table: dict[str, Rule]) -> tuple[dict[str, Any], list[bytes], bytes | None]:
    """The text fields (typed), the images, and the mask of a multipart body (checked against the
    route's ``table`` of fields: one asking for what cannot be made is refused)."""
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType(f"send the body as multipart/form-data (got {request.content_type!r})")
    try:
        form = await request.post()
    except (ValueError, LookupError, HttpProcessingError) as exc:
        # ValueError: a part without a name, bytes that are not its charset; LookupError: a charset
        # Python does not know; HttpProcessingError: a part whose header lines are not headers.
        raise InvalidBody(f"the multipart body cannot be read: {_reason(exc)}") from None
    try:
        check_openai(table, {name: form[name] for name in form})
        return _form_values(form)
    finally:
        for value in form.values():  # the uploads aiohttp spooled to temporary files
            if hasattr(value, "file"):
                value.file.close()


def _reason(exc: Exception) -> str:
    """What went wrong, in one line (aiohttp's header errors carry the bytes they could not parse)."""
    if isinstance(exc, HttpProcessingError):
        return f"a part's headers are malformed ({exc.message.splitlines()[0][:200]})"
    return str(exc)[:200]


def _form_values(form: Any) -> tuple[dict[str, Any], list[bytes], bytes | None]:
    values: dict[str, Any] = {}
    unknown = sorted({name for name in form if name not in (*_FILES, *_IGNORED, *_TEXT, *_TYPED)})
    if unknown:
        log.info("OpenAI images request: ignoring fields this server does not know: %s", ", ".join(unknown[:20]))
    for name, value in form.items():
        if name in _FILES or name in _IGNORED or name in unknown:
            continue
        if not isinstance(value, str):
            raise _invalid(name, "Must be a text field, not a file.")
        try:
            values[name] = _TYPED[name](value) if name in _TYPED else value
        except ValueError:
            raise _invalid(name, f"Not a valid {'integer' if _TYPED[name] is int else 'number'}.") from None
    images = [_file_bytes(name, item) for name in ("image", "image[]") for item in form.getall(name, [])]
    masks = [_file_bytes("mask", item) for item in form.getall("mask", [])]
    return values, images, masks[0] if masks else None


def _file_bytes(name: str, item: Any) -> bytes:
    if isinstance(item, str) or not hasattr(item, "file"):
        raise _invalid(name, "Must be an image file (multipart file field).")
    return item.file.read()


def _core(values: dict[str, Any], prompt: str, settings: Any) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Our request for the form's ``values``, which sides of the size were given, and how to answer.
    A size is fitted into the limits as on generations (GPT-image's edits take ``1536x1024``)."""
    read = (*ANSWER_FIELDS, *STREAM_FIELDS)
    answer = validate_fields(ImagesRequestSchema(only=read), {k: values[k] for k in read if k in values})
    core: dict[str, Any] = {"prompt": prompt, "num_images": values.get("n", 1), "model": openai_model(values.get("model"))}
    core.update({name: values[name] for name in ("negative_prompt", "steps", "guidance_scale", "seed", "scheduler",
                                                 "sampler", "schedule", "strength") if name in values})
    given: list[str] = []
    size = values.get("size", "auto")
    if size != "auto":
        asked = parse_size(size)
        if asked is None:
            raise _invalid("size", "Not a size like 1024x1024 (or 'auto').")
        core["width"], core["height"] = fit_size(*asked, settings.max_width, settings.max_height, SIZE_NAMES)
        given = ["width", "height"]
        if (core["width"], core["height"]) != asked:
            log.info("OpenAI images request: size %dx%d made as %dx%d (the server's limits)",
                     *asked, core["width"], core["height"])
    return core, given, how_to_answer(answer)


async def _run(request: web.Request, core: dict[str, Any], given: list[str], image: bytes, mask: bytes | None,
               answer: dict[str, Any], prompt: str) -> web.StreamResponse:
    app = request.app
    data = validate_fields(app[keys.GENERATE_SCHEMA], core, SIZE_NAMES)
    data.update(init_image=image, mask=mask, prompt=prompt)
    async with stored_inputs(app, data, given, names={"init_image": "image", **SIZE_NAMES}, alpha_mask=True) as data:
        params = await with_model(app, await with_loras(app, to_params(data)))
        params = await with_presets(app, params, given_fields(core))
        asked = ImagesAsk(core=data, count=params.num_images, **answer)
        if asked.stream:
            return await stream_images(request, params, asked, "image_edit")
        return await images_response(request, params, asked)


def _one_image(images: list[bytes]) -> bytes:
    if not images:
        raise _invalid("image", "An image file is required.")
    return images[0]


async def edits(request: web.Request) -> web.StreamResponse:
    """``POST /v1/images/edits`` (multipart): ``{created, data: [{url} | {b64_json}]}``."""
    values, images, mask = await _read_form(request, OPENAI_EDITS)
    image = _one_image(images)
    prompt = values.get("prompt", "")
    if not prompt.strip():
        raise _invalid("prompt", "A prompt is required.")
    values.setdefault("strength", EDIT_STRENGTH[mask is not None])
    core, given, answer = _core(values, prompt, request.app[keys.SETTINGS])
    return await _run(request, core, given, image, mask, answer, prompt)


async def variations(request: web.Request) -> web.Response:
    """``POST /v1/images/variations`` (multipart): image to image with no prompt."""
    values, images, mask = await _read_form(request, OPENAI_VARIATIONS)
    if mask is not None:
        raise _invalid("mask", "Variations take no mask: use /v1/images/edits.")
    image = _one_image(images)
    values.pop("prompt", None)
    values.setdefault("strength", VARIATION_STRENGTH)
    core, given, answer = _core(values, "variation", request.app[keys.SETTINGS])  # our schema needs a prompt; the job has none
    if answer["stream"]:
        raise _invalid("stream", "Variations are not streamed (nor are OpenAI's): use /v1/images/edits.")
    return await _run(request, core, given, image, None, answer, "")


def _form_schema(name: str, settings: Any, *, prompt: bool, mask: bool) -> Schema:
    """The multipart body, for the OpenAPI document."""
    core = generate_request_fields(settings)
    binary = {"type": "string", "format": "binary", "contentMediaType": "image/png"}
    spec: dict[str, fields.Field] = {
        "image": fields.Raw(required=True, metadata={**binary, "description": "PNG, JPEG or WebP (image[] for several: the first is used)."}),
        "n": fields.Integer(load_default=1, validate=validate.Range(min=1, max=settings.max_batch)),
        "size": fields.String(load_default="auto", validate=validate.Regexp(r"^(auto|[0-9]+x[0-9]+)$"),
                              metadata={"description": "'WIDTHxHEIGHT' (fitted into the limits, keeping its shape), "
                                                       "or 'auto' (the image's size)."}),
        **{field: ImagesRequestSchema().fields[field] for field in (*ANSWER_FIELDS, "stream", "partial_images")},
        **{field: core[field] for field in ("negative_prompt", "steps", "guidance_scale", "seed", "scheduler", "sampler",
                                            "schedule", "strength")},
    }
    if prompt:
        spec["prompt"] = core["prompt"]
    if mask:
        spec["mask"] = fields.Raw(metadata={**binary, "description": "PNG whose fully transparent pixels mark the area to edit."})
    return Schema.from_dict(spec, name=name)()


def edits_schema_for_spec(settings: Any) -> Schema:
    return _form_schema("OpenAIImageEditRequest", settings, prompt=True, mask=True)


def variations_schema_for_spec(settings: Any) -> Schema:
    return _form_schema("OpenAIImageVariationRequest", settings, prompt=False, mask=False)
