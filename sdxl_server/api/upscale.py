"""Upscaling on our own API: ``GET /api/v1/upscalers`` (the built-ins and ``UPSCALERS_DIR``'s
files, unusable ones with the reason) and ``POST /api/v1/upscale`` (an image in, a job out: the
same queue, progress, outputs and metadata as a generation). :func:`queue_upscale` is also what
A1111's extras routes queue with (:mod:`.a1111_extras`).

The image is decoded and stored off the event loop before the job is queued, and the upscalers are
looked up there too (a file seen for the first time is read once). The final size is checked
against ``MAX_OUTPUT_PIXELS`` (422 naming the limit and the largest scale allowed). Never imports torch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, fields, validate

from ..config import Settings
from ..errors import ValidationFailed
from ..jobs import images
from ..jobs.describe import describe
from ..jobs.inputs import InputHold
from ..jobs.job import Job
from ..params import GenerationParams, UpscaleOptions
from ..pipeline.upscaler_catalog import NONE, UpscalerCatalog
from . import keys
from .schemas import StrictFloat, StrictInteger
from .validation import read_json_object, validate as validate_body

SCALE_MAX = 8.0  # as A1111's extras (upscaling_resize: 1 to 8)
SIDE_MAX = 16384


@dataclass(frozen=True)
class UpscaleAsk:
    """One upscale as a client asks for it, in our names (``names``: ours -> the client's field)."""

    image: str  # base64 or a data: URL
    upscaler: str
    scale: float = 2.0
    width: int = 0  # with height: cover it, then crop the centre to it (if crop)
    height: int = 0
    crop: bool = True
    upscaler_2: str = NONE
    visibility_2: float = 0.0
    eighths: bool = False  # A1111 makes sizes a multiple of 8 (rounded down)


def target(size: tuple[int, int], ask: UpscaleAsk) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """(the scale, the upscaled size, the crop: (0, 0) for none) of an image of ``size``."""
    width, height = size
    if ask.width and ask.height:
        scale = max(ask.width / width, ask.height / height)
    elif ask.width or ask.height:
        scale = ask.width / width if ask.width else ask.height / height
    else:
        scale = ask.scale
    if ask.eighths:
        upscaled = (max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8))
    else:
        upscaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    crop = (ask.width, ask.height) if ask.width and ask.height and ask.crop else (0, 0)
    return scale, upscaled, crop


def _refused(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", fields={field: [message]})


def _check_size(settings: Settings, size: tuple[int, int], upscaled: tuple[int, int], ask: UpscaleAsk,
                names: Mapping[str, str]) -> None:
    limit = settings.max_output_pixels
    if upscaled[0] * upscaled[1] <= limit:
        return
    largest = math.floor(math.sqrt(limit / (size[0] * size[1])) * 100) / 100
    field = "width" if ask.width or ask.height else "scale"
    raise _refused(names.get(field, field), f"The upscaled size {upscaled[0]}x{upscaled[1]} has more than MAX_OUTPUT_PIXELS = "
                                            f"{limit} pixels: from {size[0]}x{size[1]} the largest scale allowed is {largest:g}.")


def _stored(settings: Settings, hold: InputHold, ask: UpscaleAsk, names: Mapping[str, str]) -> GenerationParams:
    """On a worker thread: the image decoded (with every image route's checks), sized and stored;
    the job's parameters."""
    field = names.get("image", "image")
    image = images.to_rgb(images.open_image(images.image_bytes(ask.image, field), field, settings.max_input_pixels))
    if ask.upscaler == NONE:  # A1111: no first upscaler, no upscale (and no second one)
        upscaled, crop, options = image.size, (0, 0), UpscaleOptions()
    else:
        _, upscaled, crop = target(image.size, ask)
        _check_size(settings, image.size, upscaled, ask, names)
        options = UpscaleOptions(ask.upscaler, ask.upscaler_2, ask.visibility_2, *crop)
    return GenerationParams(prompt="", negative_prompt="", width=upscaled[0], height=upscaled[1], steps=1,
                            guidance_scale=0.0, seed=0, inputs={"upscale": hold.put(image)}, upscale=options)


def _checked_names(catalog: UpscalerCatalog, ask: UpscaleAsk, names: Mapping[str, str]) -> UpscaleAsk:
    """``ask`` with its upscalers' names as the catalog spells them (422 for an unknown or broken one)."""
    first = catalog.lookup(ask.upscaler, names.get("upscaler", "upscaler")).name
    second = NONE
    if ask.visibility_2 > 0 and ask.upscaler_2 not in ("", NONE):
        second = catalog.lookup(ask.upscaler_2, names.get("upscaler_2", "upscaler_2")).name
    return dataclasses.replace(ask, upscaler=first, upscaler_2=second)


async def queue_upscale(app: web.Application, ask: UpscaleAsk, names: Mapping[str, str] | None = None,
                        warnings: tuple[str, ...] = ()) -> Job:
    """Check ``ask``, store its image and queue its job (fields named as the client calls them:
    ``names``; ``warnings``: what the request asked for that is not applied, kept in the metadata)."""
    names = names or {}
    loop = asyncio.get_running_loop()
    ask = await loop.run_in_executor(None, _checked_names, app[keys.UPSCALERS], ask, names)
    with app[keys.STORE].inputs.held() as hold:
        params = await loop.run_in_executor(None, _stored, app[keys.SETTINGS], hold, ask, names)
        job, _ = await app[keys.QUEUE].submit(params, warnings=warnings)
    return job


class StrictBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only (marshmallow's Boolean takes 0, 1, "yes"...: our API is strict)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def upscale_request_schema() -> Schema:
    """``POST /api/v1/upscale``'s body (unknown fields refused)."""
    size = {"load_default": 0, "validate": validate.Range(min=0, max=SIDE_MAX)}
    cls = Schema.from_dict({
        "image": fields.String(required=True, validate=validate.Length(min=1),
                               metadata={"description": "The image: base64, or a data: URL."}),
        "upscaler": fields.String(load_default="Lanczos", validate=validate.Length(min=1, max=256),
                                  metadata={"description": "Lanczos, Nearest, or a model of GET /api/v1/upscalers."}),
        "scale": StrictFloat(load_default=2.0, validate=validate.Range(min=1.0, max=SCALE_MAX),
                             metadata={"description": f"Times the image's size (1 to {SCALE_MAX:g}); width/height win over it."}),
        "width": StrictInteger(**size, metadata={"description": "The final width (0: from scale or height, aspect kept)."}),
        "height": StrictInteger(**size, metadata={"description": "The final height; with width: cover both, then crop."}),
        "crop": StrictBoolean(load_default=True, metadata={"description": "With width and height: crop the centre to them."}),
        "upscaler_2": fields.String(load_default=NONE, validate=validate.Length(min=1, max=256),
                                    metadata={"description": "A second upscaler blended in (A1111's extras)."}),
        "upscaler_2_visibility": StrictFloat(load_default=0.0, validate=validate.Range(min=0.0, max=1.0),
                                             metadata={"description": "How much of the second upscaler's image (0 to 1)."}),
    }, name="UpscaleRequest")
    return cls(unknown=RAISE)


async def upscale(request: web.Request) -> web.Response:
    """``POST /api/v1/upscale``: 202 with the job (progress counts tiles) and its ``Location``."""
    data = validate_body(upscale_request_schema(), await read_json_object(request))
    ask = UpscaleAsk(data["image"], data["upscaler"], data["scale"], data["width"], data["height"], data["crop"],
                     data["upscaler_2"], data["upscaler_2_visibility"])
    job = await queue_upscale(request.app, ask, {"visibility_2": "upscaler_2_visibility"})
    return web.json_response(describe(request.app[keys.QUEUE], job), status=202,
                             headers={"Location": f"/api/v1/jobs/{job.id}"})


async def list_upscalers(request: web.Request) -> web.Response:
    """``GET /api/v1/upscalers``: every upscaler, usable or not (and why), read off the event loop."""
    catalog = request.app[keys.UPSCALERS]
    entries = await asyncio.to_thread(catalog.entries)
    return web.json_response({"upscalers_dir": str(catalog.directory), "upscalers": [e.describe() for e in entries]})
