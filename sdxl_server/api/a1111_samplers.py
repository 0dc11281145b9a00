"""A1111's sampler and schedule type words (``sampler_name``, ``scheduler``; 1.9+'s split) onto
ours (:mod:`sdxl_server.sampling`), and the routes that list them (``/sdapi/v1/samplers``,
``/sdapi/v1/schedulers``: exactly what runs here).

A1111 clients are served leniently: an old combined name (``DPM++ 2M Karras``) is split; a sampler
or schedule this server lacks is replaced by the nearest it has, and a schedule the sampler does
not take by its own, each with a note in ``info``; only a name nobody knows is refused. As in A1111
1.9+, ``Automatic`` means the sampler's own preference (Karras for DPM++ 2M, DPM2 and DPM2 a,
exponential for DPM++ 2M SDE). :func:`a1111_pair` is what hires fix's second pass calls too.
Never imports torch.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import ValidationFailed
from ..sampling import AUTOMATIC, DEFAULT_SAMPLER, SAMPLERS, SCHEDULES

# Ours -> A1111's label (the name), the aliases it also takes.
_LISTED = {name: sampler for name, sampler in SAMPLERS.items() if name != DEFAULT_SAMPLER}
_BY_NAME = {key.lower(): name for name, sampler in _LISTED.items() for key in (sampler.label, name, *sampler.aliases)}
_SCHEDULE_BY_NAME = {key.lower(): name for name, schedule in SCHEDULES.items() for key in (schedule.label, schedule.a1111, name)}
# A1111 1.9+'s "Automatic" for a sampler that prefers a schedule of its own.
A1111_AUTOMATIC = {"dpmpp_2m": "karras", "dpmpp_2m_sde": "exponential", "dpm2": "karras", "dpm2_a": "karras"}
# A1111 samplers this server lacks -> the nearest it has (same family: ancestral, SDE, multistep),
# used with a note in ``info`` rather than refused, as clients offer A1111's whole list.
NEAREST_SAMPLER = {
    "dpm++ sde": "dpmpp_2m_sde", "dpm++ 2m sde heun": "dpmpp_2m_sde", "dpm++ 2m sde gpu": "dpmpp_2m_sde",
    "dpm++ 3m sde": "dpmpp_2m_sde", "dpm++ 2s a": "euler_a", "dpm fast": "dpmpp_2m", "dpm adaptive": "dpmpp_2m",
    "restart": "euler", "plms": "ddim", "ipndm": "deis", "ipndm_v": "deis", "ddim cfg++": "ddim",
}
# A1111 schedule types this server lacks -> the nearest it has (the same spacing of noise levels).
NEAREST_SCHEDULE = {"normal": "uniform", "simple": "sgm_uniform", "ddim": "uniform",
                    "polyexponential": "exponential", "kl_optimal": "karras"}


def _sampler(given: str, notes: list[str]) -> tuple[str, str | None]:
    """Our sampler for A1111's ``given``, and the schedule its name carries (an old combined name)."""
    name, carried = given.strip().lower(), None
    for schedule in ("karras", "exponential"):
        if name.endswith(f" {schedule}") and name not in _BY_NAME:  # older A1111 names carry the schedule
            name, carried = name.removesuffix(f" {schedule}"), schedule
    sampler = _BY_NAME.get(name)
    if sampler is None and name in NEAREST_SAMPLER:
        sampler = NEAREST_SAMPLER[name]
        notes.append(f"sampler {given!r} is not available here: used {SAMPLERS[sampler].label!r}, the nearest")
    if sampler is None:
        raise ValidationFailed(
            f"unknown sampler {given[:60]!r}: use one of {', '.join(s.label for s in _LISTED.values())} (GET /sdapi/v1/samplers)",
            fields={"sampler_name": ["Unknown sampler."]},
        )
    return sampler, carried


def _schedule(given: str | None, notes: list[str]) -> str | None:
    """Our schedule for A1111's ``scheduler`` (None: Automatic)."""
    name = (given or "").strip().lower()
    if name in ("", "automatic"):
        return None
    if name in _SCHEDULE_BY_NAME:
        return _SCHEDULE_BY_NAME[name]
    nearest = NEAREST_SCHEDULE.get(name, AUTOMATIC)
    notes.append(f"schedule type {given[:40]!r} is not available here: used {SCHEDULES[nearest].label!r}")
    return nearest


def a1111_pair(sampler_name: str | None, scheduler: str | None, notes: list[str]) -> tuple[str, str]:
    """Our (sampler, schedule) for A1111's ``sampler_name`` and ``scheduler``; what was changed is
    appended to ``notes``. A schedule the sampler does not take is made Automatic (with a note)
    by :func:`.presets.with_presets`, once a preset may have named the sampler."""
    schedule = _schedule(scheduler, notes)
    if not sampler_name:
        sampler = DEFAULT_SAMPLER
    else:
        sampler, carried = _sampler(sampler_name, notes)
        schedule = schedule or carried or A1111_AUTOMATIC.get(sampler)
    return sampler, schedule or AUTOMATIC  # whether the sampler takes it: once presets are in (api/presets.py)


def a1111_given(request: dict[str, Any]) -> set[str]:
    """Our fields an A1111 request (as loaded) gives, for presets: its CLIP skip is always given (the
    server's option when the request has none, as in A1111); ``Automatic`` leaves the schedule to a preset."""
    given = {ours for theirs, ours in (("steps", "steps"), ("cfg_scale", "guidance_scale"), ("width", "width"),
                                       ("height", "height")) if request.get(theirs) is not None}
    if request.get("sampler_name") or request.get("sampler_index"):
        given.add("sampler")
    if (request.get("scheduler") or "automatic").strip().lower() != "automatic":
        given.add("schedule")
    return {*given, "clip_skip"}


def sampler_choices() -> list[str]:
    """Every ``sampler_name`` taken as is (for the OpenAPI document)."""
    return [*(s.label for s in _LISTED.values()), *_BY_NAME]


async def samplers(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/samplers``: every sampler that runs here (``options.scheduler``: what
    Automatic means for it, as A1111 1.9+ says)."""
    return web.json_response([
        {"name": sampler.label, "aliases": [name, *sampler.aliases],
         "options": {"scheduler": A1111_AUTOMATIC[name]} if name in A1111_AUTOMATIC else {}}
        for name, sampler in _LISTED.items()
    ])


async def schedulers(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/schedulers``: every schedule type that runs here (with at least one sampler)."""
    return web.json_response([
        {"name": schedule.a1111, "label": schedule.label, "aliases": None,
         "default_rho": 7.0 if name == "karras" else -1, "need_inner_model": False}
        for name, schedule in SCHEDULES.items()
    ])
