"""Requests that carry images (image to image, inpainting): turning the images they send into
stored inputs, and queueing their jobs while those are held (their fields are in :mod:`.schemas`).

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

from ..config import Settings
from ..errors import ApiError, ValidationFailed
from ..jobs import images
from ..jobs.inputs import InputHold
from ..jobs.job import Job
from ..params import INPUT_ROLES, GenerationParams, denoising_steps
from ..pipeline.preprocessors import Annotate
from . import keys
from .identity import IDENTITY
from .control_units import check_units, has_units, store_control_maps
from .hires import check_hires, hires_upscalers

IMAGE_FIELDS = tuple(role.field for role in INPUT_ROLES.values() if role.listed)
REFINER_HINT = (
    "no refiner is configured: set REFINER_ID to a refiner's Hub id (e.g. stabilityai/stable-diffusion-xl-refiner-1.0), "
    "folder or .safetensors file (or 'tiny' to try it offline), or put sd_xl_refiner_1.0.safetensors in MODEL_DIR"
)


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


def decode_all(
    settings: Settings, hold: InputHold, data: dict[str, Any], given: Collection[str], alpha_mask: bool = False,
    invert_mask: bool = False, annotate: Annotate | None = None,
) -> dict[str, Any]:
    """On a worker thread: the input image and mask (when given), then the ControlNet units'
    control maps at the size the job runs at (``annotate``: the annotator models some
    preprocessors run); return the request with their hashes."""
    if data.get("init_image") is not None:
        data = decode_inputs(settings, hold, data, given, alpha_mask, invert_mask)
    else:
        data = {**data, "init_image": None, "mask": None}
    return store_control_maps(hold, data, (data["width"], data["height"]), settings.max_input_pixels, annotate)


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
    inputs, loop = app[keys.STORE].inputs, asyncio.get_running_loop()
    try:
        with inputs.held() as hold:
            try:
                _check_combination(data)
                await check_units(app, data)
                if data.get("init_image") is None and not has_units(data):
                    stored = {**data, **{name: None for name in IMAGE_FIELDS}}
                else:
                    stored = await loop.run_in_executor(
                        None, decode_all, app[keys.SETTINGS], hold, data, given, alpha_mask, invert_mask,
                        app[keys.ANNOTATORS],
                    )
            except ApiError as exc:
                raise exc.renamed(names) from None
            yield stored
    finally:
        if hold.hashes:  # what no queued job holds now is deleted (maybe in object storage: off the loop)
            await loop.run_in_executor(None, inputs.sweep, hold.hashes)


async def submit(
    request: web.Request, params: GenerationParams, *, names: Mapping[str, str] | None = None, **idempotency: Any
) -> tuple[Job, bool]:
    """Queue the job (see :meth:`JobQueue.submit`), owned by the caller's key; call it inside
    :func:`stored_inputs`, which keeps the job's inputs until the job holds them. Refuses a refiner
    when none is configured (naming the field as the client's API does: ``names``)."""
    app = request.app
    try:
        if params.refiner.mode != "none" and app[keys.STATUS].latest.described.get("refiner") is None:
            raise ValidationFailed(REFINER_HINT, fields={"refiner": [REFINER_HINT]})
        _check_steps(params.to_dict())
        if params.hires.enabled:
            check_hires(params, app[keys.SETTINGS], await hires_upscalers(app))
    except ApiError as exc:
        raise exc.renamed(names) from None
    return await app[keys.QUEUE].submit(params, owner=request[IDENTITY].name, **idempotency)

