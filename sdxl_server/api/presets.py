"""Presets on the API side: a model's and its LoRAs' recommended settings
(:mod:`sdxl_server.pipeline.presets`) filled into the fields a request leaves out.

The order is documented (docs/models-and-memory.md): the model's preset first, then each LoRA's in
the request's order, a later one overriding an earlier one (a Lightning LoRA's 4 steps win over its
base model's 30); a field the request gives always wins. Width and height are only taken by text to
image (image to image takes its input's size). The job's ``presets`` record which fields came from
where, and the metadata keeps them. Every route calls :func:`with_presets` after the model and the
LoRAs are checked, with the names of the fields its client gave (:func:`given_fields`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from ..params import GenerationParams
from ..sampling import AUTOMATIC, SAMPLERS, SCHEDULES, schedule_problem
from . import keys
from .schemas import check_sampler_pair

PRESETTABLE = ("steps", "guidance_scale", "sampler", "schedule", "width", "height", "clip_skip")
_SIZE = ("width", "height")


def given_fields(body: Mapping[str, Any], names: Mapping[str, str] | None = None) -> set[str]:
    """Our field names a client's ``body`` gives a value for (``names``: their field -> ours; the
    older ``scheduler`` gives the sampler, and its schedule when the name carries one)."""
    names = names or {}
    given = {names.get(key, key) for key, value in body.items() if value is not None}
    if "scheduler" in given:
        given.add("sampler")
        if str(body.get("scheduler", "")).endswith("_karras"):
            given.add("schedule")
    return given & set(PRESETTABLE)


def _sources(app: web.Application, params: GenerationParams) -> list[tuple[str, dict[str, Any]]]:
    """``(where, settings)`` of each preset that applies, in order: the model's, then each LoRA's."""
    sources = []
    entry = app[keys.MODELS].get(params.model)
    if entry is not None and entry.sidecar.settings:
        sources.append(("model", entry.sidecar.settings))
    if params.loras:
        files = {f.name: f for f in app[keys.LORAS].files()}
        for name, _ in params.loras:
            found = files.get(name)
            if found is not None and found.sidecar.settings:
                sources.append((f"lora:{name}", found.sidecar.settings))
    return sources


def preset_changes(params: GenerationParams, sources: list[tuple[str, dict[str, Any]]], given: set[str],
                   limits: Mapping[str, int]) -> tuple[dict[str, Any], dict[str, str]]:
    """The fields the presets set (within ``limits``: field -> the server's highest) and where each came from."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, settings in sources:
        for name, value in settings.items():
            if name in given or (name in _SIZE and params.mode != "txt2img"):
                continue
            values[name] = min(value, limits[name]) if name in limits else value
            origin[name] = where
        if "sampler" in settings and "schedule" not in settings and origin.get("schedule", where) != where:
            if schedule_problem(values["sampler"], values["schedule"]):  # an earlier preset's schedule it cannot run
                del values["schedule"], origin["schedule"]
    pair = (values.get("sampler", params.sampler), values.get("schedule", params.schedule))
    if schedule_problem(*pair):  # a preset's schedule the request's sampler cannot run (or the reverse)
        for name in ("sampler", "schedule"):
            values.pop(name, None)
            origin.pop(name, None)
    return values, origin


async def with_presets(app: web.Application, params: GenerationParams, given: Iterable[str],
                       notes: list[str] | None = None) -> GenerationParams:
    """``params`` with its model's and LoRAs' presets in the fields not in ``given``; 422 naming
    ``schedule`` when its sampler does not take its schedule, or (``notes`` given: a lenient API)
    the schedule made Automatic with a note."""
    sources = await asyncio.to_thread(_sources, app, params)
    if sources:
        settings = app[keys.SETTINGS]
        limits = {"steps": settings.max_steps, "width": settings.max_width, "height": settings.max_height}
        values, origin = preset_changes(params, sources, set(given), limits)
        params = params.replace(**values, presets=origin) if values else params
    if notes is not None and schedule_problem(params.sampler, params.schedule):
        notes.append(f"schedule type {SCHEDULES[params.schedule].label!r} does not run faithfully with "
                     f"{SAMPLERS[params.sampler].label!r} here: used Automatic")
        params = params.replace(schedule=AUTOMATIC)
    return check_sampler_pair(params)
