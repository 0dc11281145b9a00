"""A request's ControlNet units on the API side (``controlnet: [...]`` on generate and jobs; their
schema, with the preprocessor and threshold checks, is in :mod:`.schemas`): their models checked
against CONTROLNET_DIR before anything is decoded, and their control images decoded, preprocessed
at the job's size and stored as the input roles ``control0``... (called by :mod:`.image_inputs`
off the event loop). Never imports torch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..errors import ValidationFailed
from ..jobs import images
from ..jobs.inputs import InputHold
from ..pipeline.preprocessors import PREPROCESSORS, Annotate, control_map
from . import keys

FIELD = "controlnet"


IP_FIELD = "ip_adapter"


def has_units(data: Mapping[str, Any]) -> bool:
    return bool(data.get(FIELD) or data.get(IP_FIELD))


async def check_units(app: web.Application, data: Mapping[str, Any]) -> None:
    """422 naming the unit when a ControlNet or IP-Adapter unit's model is unknown or unusable
    (before any image is decoded)."""
    units = data.get(FIELD) or []
    if units:
        await asyncio.to_thread(app[keys.CONTROLNETS].check, [(unit["model"], unit.get("type", "")) for unit in units])
        await asyncio.to_thread(_check_modules, app[keys.ANNOTATORS], units)
    adapters = data.get(IP_FIELD) or []
    if adapters:
        await asyncio.to_thread(app[keys.IP_ADAPTERS].check, [unit["name"] for unit in adapters])


def check_module(annotate: Annotate, module: str, where: str) -> None:
    """422 naming ``where`` when preprocessor ``module`` cannot run here (its annotator model is missing)."""
    problem = PREPROCESSORS[module].why_not(annotate)
    if problem is not None:
        _refuse(where, f"Preprocessor {module!r} {problem}.")


def _check_modules(annotate: Annotate, units: list[Mapping[str, Any]]) -> None:
    for index, unit in enumerate(units):
        check_module(annotate, unit["module"], f"{FIELD}[{index}].module")


def _unit_map(unit: Mapping[str, Any], index: int, size: tuple[int, int], max_pixels: int, annotate: Annotate | None) -> Any:
    where = f"{FIELD}[{index}].image"
    image = images.to_rgb(images.open_image(images.image_bytes(unit["image"], where), where, max_pixels))
    image = images.resize(image, size, unit["resize_mode"])
    return preprocessed(image, unit, size, annotate, f"{FIELD}[{index}].module")


def preprocessed(image: Any, unit: Mapping[str, Any], size: tuple[int, int], annotate: Annotate | None, where: str) -> Any:
    """``image`` through the unit's preprocessor; 422 naming ``where`` when it cannot run (its
    annotator model missing, unloadable, or failing on this image)."""
    try:
        return control_map(image, unit["module"], size, unit["processor_res"], unit["threshold_a"], unit["threshold_b"], annotate)
    except LookupError as exc:
        _refuse(where, str(exc))


def _refuse(where: str, message: str) -> Any:
    raise ValidationFailed(f"{where}: {message}", fields={where: [message]})


def store_control_maps(hold: InputHold, data: dict[str, Any], size: tuple[int, int], max_pixels: int,
                       annotate: Annotate | None) -> dict[str, Any]:
    """On a worker thread: each unit's image decoded, brought to ``size``, preprocessed and stored
    (held by ``hold``) as input role ``control{i}``; the units keep their settings, not their images.
    The IP-Adapter units' reference images are stored as they are (role ``ip{i}``).
    Returns the request with the hashes in ``control{i}_image`` and ``ip_adapter{i}_image``."""
    units, adapters = data.get(FIELD) or [], data.get(IP_FIELD) or []
    out = {**data, **{name: [{k: v for k, v in unit.items() if k != "image"} for unit in data.get(name) or []]
                      for name in (FIELD, IP_FIELD)}}
    for index, unit in enumerate(units):
        out[f"control{index}_image"] = hold.put(_unit_map(unit, index, size, max_pixels, annotate))
    for index, unit in enumerate(adapters):
        where = f"{IP_FIELD}[{index}].image"
        out[f"ip_adapter{index}_image"] = hold.put(
            images.to_rgb(images.open_image(images.image_bytes(unit["image"], where), where, max_pixels)))
    return out
