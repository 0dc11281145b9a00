"""The OpenAI Images API's multipart routes: ``POST /v1/images/edits`` and ``/v1/images/variations``.

``edits``: ``image`` (or several ``image[]``: the first is the one edited), an optional ``mask``
whose fully transparent pixels mark the area to edit (OpenAI's convention), ``prompt``, ``n``,
``size`` ("auto" or absent: the image's own size, fitted to the limits), ``response_format``,
``model`` (accepted; the loaded model is used). With a mask it is inpainting at ``strength`` 1 (the
area is drawn anew); without one, image to image at 0.75. ``variations``: image to image with an
empty prompt at :data:`VARIATION_STRENGTH`. Our own fields (``negative_prompt``, ``steps``,
``guidance_scale``, ``seed``, ``scheduler``, ``strength``) may be added as extensions. Errors take
OpenAI's shape (see :mod:`.openai`). Never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields, validate

from ..errors import InvalidBody, UnsupportedMediaType, ValidationFailed
from . import keys
from .image_inputs import with_inputs
from .loras import with_loras
from .models import with_model
from .openai import IGNORED, SIZE_NAMES, ImagesAsk, images_response
from .schemas import generate_request_fields, to_params
from .sizes import parse_size
from .validation import validate as validate_fields

VARIATION_STRENGTH = 0.6
EDIT_STRENGTH = {True: 1.0, False: 0.75}  # with a mask, without one
_TYPED: dict[str, Callable[[str], Any]] = {
    "n": int, "steps": int, "seed": int, "guidance_scale": float, "strength": float,
}
_TEXT = ("prompt", "size", "response_format", "model", "negative_prompt", "scheduler")
_FILES = ("image", "image[]", "mask")
_IGNORED = (*IGNORED, "input_fidelity", "stream")


def _invalid(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{name}: {message}", fields={name: [message]})


async def _read_form(request: web.Request) -> tuple[dict[str, Any], list[bytes], bytes | None]:
    """The text fields (typed), the images, and the mask of a multipart body."""
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType(f"send the body as multipart/form-data (got {request.content_type!r})")
    try:
        form = await request.post()
    except ValueError as exc:
        raise InvalidBody(f"the multipart body cannot be read: {exc}") from None
    try:
        return _form_values(form)
    finally:
        for value in form.values():  # the uploads aiohttp spooled to temporary files
            if hasattr(value, "file"):
                value.file.close()


def _form_values(form: Any) -> tuple[dict[str, Any], list[bytes], bytes | None]:
    values: dict[str, Any] = {}
    for name, value in form.items():
        if name in _FILES or name in _IGNORED:
            continue
        if name not in _TEXT and name not in _TYPED:
            raise _invalid(name, "Unrecognized request argument supplied.")
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


def _core(values: dict[str, Any], prompt: str) -> tuple[dict[str, Any], list[str], str]:
    """Our request for the form's ``values``, which sides of the size were given, and the response format."""
    response_format = values.get("response_format", "url")
    if response_format not in ("url", "b64_json"):
        raise _invalid("response_format", "Must be one of: url, b64_json.")
    core: dict[str, Any] = {"prompt": prompt, "num_images": values.get("n", 1)}
    core.update({name: values[name] for name in ("negative_prompt", "steps", "guidance_scale", "seed", "scheduler",
                                                 "strength") if name in values})
    given: list[str] = []
    size = values.get("size", "auto")
    if size != "auto":
        asked = parse_size(size)
        if asked is None:
            raise _invalid("size", "Not a size like 1024x1024 (or 'auto').")
        (core["width"], core["height"]), given = asked, ["width", "height"]
    return core, given, response_format


async def _run(request: web.Request, core: dict[str, Any], given: list[str], image: bytes, mask: bytes | None,
               response_format: str, prompt: str) -> web.Response:
    app = request.app
    data = validate_fields(app[keys.GENERATE_SCHEMA], core, SIZE_NAMES)
    data.update(init_image=image, mask=mask, prompt=prompt)
    data = await with_inputs(app, data, given, names={"init_image": "image", **SIZE_NAMES}, alpha_mask=True)
    params = await with_model(app, await with_loras(app, to_params(data)))
    asked = ImagesAsk(core=data, count=params.num_images, response_format=response_format,
                      output_format="png", compression=100, quality="auto", background="opaque")
    return await images_response(request, params, asked)


def _one_image(images: list[bytes]) -> bytes:
    if not images:
        raise _invalid("image", "An image file is required.")
    return images[0]


async def edits(request: web.Request) -> web.Response:
    """``POST /v1/images/edits`` (multipart): ``{created, data: [{url} | {b64_json}]}``."""
    values, images, mask = await _read_form(request)
    image = _one_image(images)
    prompt = values.get("prompt", "")
    if not prompt.strip():
        raise _invalid("prompt", "A prompt is required.")
    values.setdefault("strength", EDIT_STRENGTH[mask is not None])
    core, given, response_format = _core(values, prompt)
    return await _run(request, core, given, image, mask, response_format, prompt)


async def variations(request: web.Request) -> web.Response:
    """``POST /v1/images/variations`` (multipart): image to image with no prompt."""
    values, images, mask = await _read_form(request)
    if mask is not None:
        raise _invalid("mask", "Variations take no mask: use /v1/images/edits.")
    image = _one_image(images)
    values.pop("prompt", None)
    values.setdefault("strength", VARIATION_STRENGTH)
    core, given, response_format = _core(values, "variation")  # our schema needs a prompt; the job has none
    return await _run(request, core, given, image, None, response_format, "")


def _form_schema(name: str, settings: Any, *, prompt: bool, mask: bool) -> Schema:
    """The multipart body, for the OpenAPI document."""
    core = generate_request_fields(settings)
    binary = {"type": "string", "format": "binary", "contentMediaType": "image/png"}
    spec: dict[str, fields.Field] = {
        "image": fields.Raw(required=True, metadata={**binary, "description": "PNG, JPEG or WebP (image[] for several: the first is used)."}),
        "n": fields.Integer(load_default=1, validate=validate.Range(min=1, max=settings.max_batch)),
        "size": fields.String(load_default="auto", validate=validate.Regexp(r"^(auto|[0-9]+x[0-9]+)$"),
                              metadata={"description": "'WIDTHxHEIGHT' within the limits, or 'auto' (the image's size)."}),
        "response_format": fields.String(load_default="url", validate=validate.OneOf(["url", "b64_json"])),
        "model": fields.String(metadata={"description": "Accepted; the loaded model is used."}),
        **{field: core[field] for field in ("negative_prompt", "steps", "guidance_scale", "seed", "scheduler", "strength")},
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
