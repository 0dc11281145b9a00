"""Requests that carry images (image to image, inpainting): their fields, and turning the images
they send into stored inputs.

The images are decoded off the event loop (:mod:`sdxl_server.jobs.images`), brought to the size
the job runs at, and stored by SHA-256 (:class:`~sdxl_server.jobs.inputs.InputStore`) before the
job is queued; the job's parameters keep only the hashes. The request holds its stored files until
its jobs are queued (:func:`stored_inputs`), so no sweep can delete them in between. Never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

from aiohttp import web
from marshmallow import fields, validate

from ..config import Settings
from ..errors import ApiError, ValidationFailed
from ..jobs import images
from ..jobs.inputs import InputHold
from ..jobs.job import Job
from ..params import INPUT_ROLES, INPAINT_AREAS, INPAINTING_FILLS, RESIZE_MODES, GenerationParams, denoising_steps
from . import keys
from .schemas import StrictFloat, StrictInteger, StrictString

IMAGE_FIELDS = tuple(role.field for role in INPUT_ROLES.values())
REFINER_HINT = (
    "no refiner is configured: set REFINER_ID to a refiner's Hub id (e.g. stabilityai/stable-diffusion-xl-refiner-1.0), "
    "folder or .safetensors file (or 'tiny' to try it offline), or put sd_xl_refiner_1.0.safetensors in MODEL_DIR"
)


def image_request_fields(settings: Settings) -> dict[str, fields.Field]:
    """The fields of image to image and inpainting, added to the generation request."""
    return {
        "init_image": StrictString(
            load_default=None, allow_none=True,
            metadata={"description": "Image to start from: PNG, JPEG or WebP, base64 (a data: URL too). Without "
                      "width and height the output takes its size, fitted to the limits (multiples of 8)."},
        ),
        "strength": StrictFloat(
            load_default=0.75, validate=validate.Range(min=0, max=1, min_inclusive=False),
            metadata={"description": "With init_image: how much is repainted (0 < strength <= 1); "
                      "about steps x strength steps run.", "exclusiveMinimum": 0},
        ),
        "mask": StrictString(
            load_default=None, allow_none=True,
            metadata={"description": "With init_image: base64 mask, white repaints, black keeps (or opaque "
                      "repaints on a transparent layer); resized to the image. Pixels it leaves out come back unchanged."},
        ),
        "mask_blur": StrictInteger(
            load_default=4, validate=validate.Range(min=0, max=64), metadata={"description": "Mask edge blur, pixels."}
        ),
        "inpaint_area": fields.String(
            load_default="whole", validate=validate.OneOf(INPAINT_AREAS),
            metadata={"description": "'whole' repaints the whole picture; 'masked' only a padded crop around "
                      "the mask, at full resolution (A1111's 'Only masked')."},
        ),
        "mask_padding": StrictInteger(
            load_default=32, validate=validate.Range(min=0, max=1024),
            metadata={"description": "With inpaint_area 'masked': pixels around the mask in the crop."},
        ),
        "resize_mode": StrictInteger(
            load_default=0, validate=validate.OneOf(list(RESIZE_MODES)),
            metadata={"description": "When width/height differ from the input's: 0 stretch, 1 crop, 2 fill."},
        ),
        "inpainting_fill": StrictInteger(
            load_default=1, validate=validate.OneOf(list(INPAINTING_FILLS)),
            metadata={"description": "What the masked area starts from: 0 its surroundings blurred, "
                      "1 the original, 2 noise, 3 flat grey."},
        ),
    }


def _check_steps(data: Mapping[str, Any]) -> None:
    """Each model must run at least one step: the refiner's share of the schedule is not empty."""
    steps = data["steps"]
    if data.get("refiner") == "ensemble":
        base = int(steps * data["refiner_switch_at"])
        if base < 1 or steps - base < 1:
            message = f"With {steps} steps, switching at {data['refiner_switch_at']} leaves base or refiner no step: raise steps."
            raise ValidationFailed(f"refiner_switch_at: {message}", fields={"refiner_switch_at": [message]})
    elif data.get("refiner") == "image" and denoising_steps(steps, data["refiner_strength"]) < 1:
        message = (f"With {steps} steps, refiner_strength {data['refiner_strength']} runs no refiner step: "
                   f"raise it to at least {1 / steps:.2f} or raise steps.")
        raise ValidationFailed(f"refiner_strength: {message}", fields={"refiner_strength": [message]})


def _check_combination(data: Mapping[str, Any]) -> None:
    if data.get("init_image") is None:
        if data.get("mask") is not None:
            raise ValidationFailed("mask needs init_image", fields={"mask": ["A mask needs init_image, the image it masks."]})
        return
    if denoising_steps(data["steps"], data["strength"]) < 1:
        message = (f"With {data['steps']} steps, strength {data['strength']} runs no step: "
                   f"raise strength to at least {1 / data['steps']:.2f} or raise steps.")
        raise ValidationFailed(f"strength: {message}", fields={"strength": [message]})


def decode_inputs(
    settings: Settings, hold: InputHold, data: dict[str, Any], given: Collection[str], alpha_mask: bool = False,
    invert_mask: bool = False,
) -> dict[str, Any]:
    """On a worker thread: decode the image and mask, size them, store them (held by ``hold``);
    return ``data`` with their hashes and the size the job runs at."""
    image = images.to_rgb(images.open_image(images.image_bytes(data["init_image"], "init_image"), "init_image",
                                            settings.max_input_pixels))
    size = _output_size(settings, data, given, image.size)
    mask = None
    if data.get("mask") is not None:
        mask = images.to_mask(images.open_image(images.image_bytes(data["mask"], "mask"), "mask", settings.max_input_pixels),
                              alpha_marks_edit=alpha_mask)
        if invert_mask:
            mask = mask.point(lambda value: 255 - value)
        if mask.size != image.size:
            mask = mask.resize(image.size)
        mask = images.resize(mask, size, data["resize_mode"])
        images.check_mask(mask)
    image = images.resize(image, size, data["resize_mode"])
    out = {**data, "width": size[0], "height": size[1], "init_image": hold.put(image)}
    out["mask"] = None if mask is None else hold.put(mask)
    return out


def _output_size(settings: Settings, data: Mapping[str, Any], given: Collection[str], size: tuple[int, int]) -> tuple[int, int]:
    if "width" in given and "height" in given:
        return data["width"], data["height"]
    if "width" in given:
        return data["width"], images.other_side(data["width"], True, size, settings.max_height)
    if "height" in given:
        return images.other_side(data["height"], False, size, settings.max_width), data["height"]
    return images.fit_size(*size, settings.max_width, settings.max_height)


@contextlib.asynccontextmanager
async def stored_inputs(
    app: web.Application, data: dict[str, Any], given: Collection[str], *,
    names: Mapping[str, str] | None = None, alpha_mask: bool = False, invert_mask: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """``data`` (a validated request) with its images decoded and stored: their fields now hold
    SHA-256s. The files are held until the block ends: queue the jobs inside it. Errors name the
    fields as the client sent them (``names``: ours -> theirs)."""
    with app[keys.STORE].inputs.held() as hold:
        try:
            _check_combination(data)
            if data.get("init_image") is None:
                stored = {**data, **{name: None for name in IMAGE_FIELDS}}
            else:
                stored = await asyncio.get_running_loop().run_in_executor(
                    None, decode_inputs, app[keys.SETTINGS], hold, data, given, alpha_mask, invert_mask
                )
        except ApiError as exc:
            raise exc.renamed(names) from None
        yield stored


async def submit(
    app: web.Application, params: GenerationParams, *, names: Mapping[str, str] | None = None, **idempotency: Any
) -> tuple[Job, bool]:
    """Queue the job (see :meth:`JobQueue.submit`); call it inside :func:`stored_inputs`, which
    keeps the job's inputs until the job holds them. Refuses a refiner when none is configured
    (naming the field as the client's API does: ``names``)."""
    try:
        if params.refiner.mode != "none" and app[keys.STATUS].latest.described.get("refiner") is None:
            raise ValidationFailed(REFINER_HINT, fields={"refiner": [REFINER_HINT]})
        _check_steps(params.to_dict())
    except ApiError as exc:
        raise exc.renamed(names) from None
    return await app[keys.QUEUE].submit(params, **idempotency)

