"""Hires fix on our own API: the ``hires`` group of a generation request (``scale`` or
``width``/``height``, ``upscaler``, ``steps``, ``denoise``, ``prompt``, ``negative_prompt``,
``scheduler``), flattened into :class:`~sdxl_server.params.HiresOptions`' flat fields, and the
checks every API's hires request passes before its job is queued: a known upscaler, a final size
within ``MAX_OUTPUT_PIXELS`` (422 naming the limit and the largest scale allowed), at least one
second-pass step, and no mask (inpainting keeps its unmasked pixels at the first pass's size).
Never imports torch.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from ..config import Settings
from ..errors import ValidationFailed
from ..params import HIRES_SCALE_MAX, LATENT_UPSCALERS, GenerationParams, HiresOptions
from ..sampling import SCHEDULES, sampler_names
from ..pipeline.upscaler_catalog import NONE
from . import keys

DEFAULTS = HiresOptions()
HIRES_SIZE_MAX = 16384


async def hires_upscalers(app: Any) -> dict[str, str | None]:
    """The upscalers a hires request may name here, each with why it cannot be used (None: it can):
    the latent modes, then the upscaler catalog's (its files read off the event loop)."""
    entries = await asyncio.to_thread(app[keys.UPSCALERS].entries)
    return {**dict.fromkeys(LATENT_UPSCALERS), **{entry.name: entry.broken for entry in entries if entry.name != NONE}}


def hires_schema(settings: Settings) -> Schema:
    """The ``hires`` group: its fields with this server's limits (unknown ones refused)."""
    from .schemas import TEXT_PATTERN, StrictFloat, StrictInteger, StrictString, _size

    text = validate.Length(max=settings.max_prompt_length)
    size = {"validate": _size(HIRES_SIZE_MAX), "load_default": None, "allow_none": True}
    cls = Schema.from_dict({
        "scale": StrictFloat(load_default=DEFAULTS.scale, validate=validate.Range(min=1, max=HIRES_SCALE_MAX),
                             metadata={"description": f"The final size as a multiple of width x height (1 to {HIRES_SCALE_MAX:g}); "
                                                      "width or height here win over it."}),
        "width": StrictInteger(**size, metadata={"description": "The final width, a multiple of 8 (null: from scale, or "
                                                                "from height keeping the aspect); with height: cover, then crop the centre.",
                                                 "multipleOf": 8}),
        "height": StrictInteger(**size, metadata={"description": "The final height (null: from scale or width).", "multipleOf": 8}),
        "upscaler": fields.String(load_default=DEFAULTS.upscaler, validate=validate.Length(min=1, max=200),
                                  metadata={"description": "A latent mode (" + ", ".join(LATENT_UPSCALERS) + ") or a pixel "
                                            "upscaler (Lanczos, Nearest, or a model of GET /api/v1/upscalers)."}),
        "steps": StrictInteger(load_default=0, validate=validate.Range(min=0, max=settings.max_steps),
                               metadata={"description": "The second pass's steps before denoise (0: the request's steps)."}),
        "denoise": StrictFloat(load_default=DEFAULTS.denoise, validate=validate.Range(min=0, max=1, min_inclusive=False),
                               metadata={"description": "How much the second pass repaints (A1111's denoising strength).",
                                         "exclusiveMinimum": 0}),
        "prompt": StrictString(load_default="", validate=text, metadata={
            "description": "The second pass's prompt (empty: the request's).", "pattern": TEXT_PATTERN}),
        "negative_prompt": StrictString(load_default="", validate=text, metadata={
            "description": "The second pass's negative prompt (empty: the request's).", "pattern": TEXT_PATTERN}),
        "scheduler": fields.String(load_default="", validate=validate.OneOf(["", *sampler_names()]),
                                   metadata={"description": "The second pass's sampler (empty: the request's)."}),
        "schedule": fields.String(load_default="", validate=validate.OneOf(["", *SCHEDULES]), metadata={
            "description": "The second pass's schedule type (empty: the sampler's own; one the sampler does not "
                           "take runs as automatic)."}),
    }, name="HiresRequest")
    return cls(unknown=RAISE)


def hires_request_fields(settings: Settings) -> dict[str, fields.Field]:
    """The generation request's ``hires`` field: absent or null, no hires fix."""
    return {"hires": fields.Nested(
        hires_schema(settings), load_default=None, allow_none=True,
        metadata={"description": "Hires fix: the first pass at width x height, its result upscaled to the final size "
                                 f"(at most MAX_OUTPUT_PIXELS = {settings.max_output_pixels} pixels) and repainted image "
                                 "to image. One progress count over both passes."},
    )}


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """A loaded request with its ``hires`` group as the flat fields (``hires``, ``hires_scale`` ...)."""
    group = values.pop("hires", None)
    if group is not None:  # a size not given is 0 in HiresOptions
        values.update({"hires": True, **{f"hires_{name}": 0 if value is None else value for name, value in group.items()}})
    return values


def check_hires(params: GenerationParams, settings: Settings, upscalers: Mapping[str, str | None]) -> None:
    """Refuse a hires request this server cannot make (fields named ``hires.<name>``); ``upscalers``:
    :func:`hires_upscalers`."""
    options = params.hires
    if not options.enabled:
        return
    usable = ", ".join(name for name, broken in upscalers.items() if broken is None)
    if options.upscaler not in upscalers:
        _refuse("upscaler", f"Unknown upscaler {options.upscaler[:60]!r}: use one of {usable}.")
    if upscalers[options.upscaler] is not None:
        _refuse("upscaler", f"The upscaler {options.upscaler!r} cannot be used: {upscalers[options.upscaler]}. "
                            f"Usable: {usable}.")
    if params.mode == "inpaint":
        _refuse("mask", "Hires fix does not take a mask: inpaint at the size you want, or upscale afterwards.")
    width, height = params.output_size
    if width * height > settings.max_output_pixels:
        largest = math.floor(math.sqrt(settings.max_output_pixels / (params.width * params.height)) * 100) / 100
        _refuse("width" if options.width or options.height else "scale",
                f"The final size {width}x{height} has more than MAX_OUTPUT_PIXELS = {settings.max_output_pixels} pixels: "
                f"from {params.width}x{params.height} the largest scale allowed is {largest:g}.")
    if params.hires_steps < 1:
        steps = options.steps or params.steps
        _refuse("denoise", f"With {steps} steps, denoise {options.denoise} runs no second-pass step: "
                           f"raise it to at least {1 / steps:.2f} or raise steps.")


def _refuse(name: str, message: str) -> None:
    field = name if name == "mask" else f"hires.{name}"
    raise ValidationFailed(f"{field}: {message}", fields={field: [message]})
