"""AUTOMATIC1111's hires fix on ``/sdapi/v1/txt2img``: the ``enable_hr`` family read as A1111
reads it (numbers as strings, nulls as defaults, ``hr_second_pass_steps`` as a float) and mapped
onto our ``hires`` group; its facts for A1111's ``info``. A1111's img2img takes no hires fix.

- ``hr_scale`` or ``hr_resize_x``/``hr_resize_y`` (one 0: the aspect kept; both: cover and crop);
- ``hr_upscaler``: a latent mode, ``Lanczos``, ``Nearest`` or an upscaler model (null: ``Latent``;
  ``None``: resized with Lanczos, as A1111 does);
- ``hr_second_pass_steps`` (0: the first pass's), ``denoising_strength`` (A1111's default 0.75);
- ``hr_prompt``/``hr_negative_prompt`` (empty: the first pass's), ``hr_sampler_name`` and
  ``hr_scheduler`` (``Use same sampler``/``Use same scheduler`` or empty: the first pass's);
- ``hr_checkpoint_name``: the second pass runs on the first pass's model (another is warned).
Never imports torch.
"""

from __future__ import annotations

import functools
from typing import Any

from marshmallow import EXCLUDE, Schema, fields

from .a1111_samplers import a1111_pair
from ..params import GenerationParams

SAME = ("", "none", "use same sampler", "use same scheduler", "use same checkpoint")
# our field (as the hires checks name it) -> A1111's
HIRES_NAMES = {"hires": "enable_hr", "hires.scale": "hr_scale", "hires.width": "hr_resize_x", "hires.upscaler": "hr_upscaler",
               "hires.denoise": "denoising_strength", "hires.steps": "hr_second_pass_steps"}
A1111_DENOISE_DEFAULT = 0.75


@functools.cache
def _hires_schema() -> Schema:
    from .a1111 import Number

    cls = Schema.from_dict({
        "enable_hr": fields.Boolean(load_default=False, allow_none=True),
        "hr_scale": Number(load_default=2.0, as_float=True),
        "hr_resize_x": Number(load_default=0),
        "hr_resize_y": Number(load_default=0),
        "hr_upscaler": fields.String(load_default=None, allow_none=True),
        "hr_second_pass_steps": Number(load_default=0),
        "denoising_strength": Number(load_default=A1111_DENOISE_DEFAULT, as_float=True),
        "hr_prompt": fields.String(load_default="", allow_none=True),
        "hr_negative_prompt": fields.String(load_default="", allow_none=True),
        "hr_sampler_name": fields.String(load_default=None, allow_none=True),
        "hr_scheduler": fields.String(load_default=None, allow_none=True),
    }, name="A1111Hires")
    return cls(unknown=EXCLUDE)


def _same(value: str | None) -> bool:
    return (value or "").strip().lower() in SAME


def _upscaler(name: str | None) -> str:
    """A1111's ``hr_upscaler``: null is its default latent mode; "None" resizes with Lanczos, as A1111 does."""
    if not name:
        return "Latent"
    return "Lanczos" if name.strip() == "None" else name


def hires_group(body: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """``{"hires": {...}}`` for a txt2img body with ``enable_hr``, else ``{}``: ``hr_sampler_name``
    and ``hr_scheduler`` the second pass's sampler and schedule type (unset or "Use same ...": the
    first pass's)."""
    from .a1111 import validate_a1111

    asked = validate_a1111(_hires_schema(), body)
    if not asked["enable_hr"]:
        return {}
    group: dict[str, Any] = {
        "upscaler": _upscaler(asked["hr_upscaler"]), "denoise": asked["denoising_strength"],
        "steps": max(0, asked["hr_second_pass_steps"]), "prompt": asked["hr_prompt"] or "",
        "negative_prompt": asked["hr_negative_prompt"] or "",
    }
    resize = {"width": max(0, asked["hr_resize_x"]) // 8 * 8, "height": max(0, asked["hr_resize_y"]) // 8 * 8}
    if any(resize.values()):
        group.update({name: value for name, value in resize.items() if value})
    else:
        group["scale"] = asked["hr_scale"]
    sampler, schedule = asked["hr_sampler_name"], asked["hr_scheduler"]
    if not _same(sampler) or not _same(schedule):
        ours, ours_schedule = a1111_pair(None if _same(sampler) else sampler, None if _same(schedule) else schedule, notes)
        if not _same(sampler):
            group["scheduler"] = ours
        if not _same(schedule) or not _same(sampler):
            group["schedule"] = ours_schedule
    return {"hires": group}


def hires_info(params: GenerationParams) -> dict[str, Any]:
    """What A1111's ``info`` says of hires fix: ``denoising_strength`` and its extra parameters."""
    if not params.hires.enabled:
        return {}
    options = params.hires
    extra: dict[str, Any] = {"Hires upscaler": options.upscaler}
    if options.width or options.height:
        extra["Hires resize"] = f"{options.width}x{options.height}"
    else:
        extra["Hires upscale"] = options.scale
    if options.steps:
        extra["Hires steps"] = options.steps
    return {"denoising_strength": options.denoise, "extra_generation_params": extra}
