"""The sd-webui-controlnet extension's API, which A1111 clients speak: ControlNet units in
``alwayson_scripts.controlnet.args`` on txt2img and img2img (read here into our ``controlnet``
units), the detected maps appended to ``images``, and the extension's routes
(``/controlnet/version``, ``/model_list``, ``/module_list``, ``/control_types``, ``/settings``,
``POST /controlnet/detect``).

Lenient as A1111 is: numbers as numeric strings, ``resize_mode`` and ``control_mode`` as the
extension's text or its numbers, ``-1`` for "the preprocessor's default", thresholds outside a
preprocessor's range brought into it (with a note); ``enabled: false`` units are skipped. What a
unit asks that is not done (its own mask) is said in ``info["warnings"]``. Never imports torch.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..errors import ValidationFailed
from ..params import CONTROL_MODE_LABELS, CONTROL_MODES, CONTROL_RESIZE_LABELS, CONTROL_WEIGHT_MAX
from ..pipeline.preprocessors import ALIASES, AVAILABLE, PREPROCESSORS, runnable
from . import keys
from .controlnets import detect_map
from .schemas import PROCESSOR_RES_MAX, PROCESSOR_RES_MIN
from .validation import read_json_object

API_VERSION = 2  # the extension's external_code.get_api_version()
DEFAULT_PROCESSOR_RES = 512
WHERE = "alwayson_scripts.controlnet.args"
# The extension's resize modes by lowercased name (its older "Inner Fit"/"Outer Fit" names too).
RESIZE_NAMES = {**{label.lower(): number for number, label in enumerate(CONTROL_RESIZE_LABELS)},
                "scale to fit (inner fit)": 1, "envelope (outer fit)": 2}
CONTROL_LABELS = tuple(CONTROL_MODE_LABELS[mode] for mode in CONTROL_MODES.values())
CONTROL_MODE_NAMES = {label.lower(): number for number, label in enumerate(CONTROL_LABELS)}
# The extension's union_control_type names (and our preprocessors) -> a Union model's control type.
UNION_TYPE_NAMES = {"openpose": "openpose", "depth": "depth", "softedge": "softedge", "scribble": "softedge",
                    "canny": "canny", "lineart": "canny", "mlsd": "canny", "normal": "normal", "segment": "segment",
                    "tile": "tile", "repaint": "repaint", "inpaint": "repaint"}
MODULE_UNION_TYPES = {"canny": "canny", "invert": "canny", "lineart_standard": "canny", "binary": "softedge",
                      "tile_resample": "tile"}
_HASH_SUFFIX = re.compile(r" \[[0-9a-fA-F]{4,64}\]$")  # the extension lists models as "name [hash]"


def _refused(where: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{where}: {message}", fields={where: [message]})


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _number(unit: Mapping[str, Any], name: str, where: str, default: float) -> float:
    """A number as pydantic reads one: a JSON number or a numeric string; null: ``default``."""
    value = unit.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise _refused(_at(where, name), "Not a valid number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _refused(_at(where, name), "Not a valid number.") from None
    if not math.isfinite(number):
        raise _refused(_at(where, name), "Not a valid number.")
    return number


def _choice(unit: Mapping[str, Any], name: str, where: str, labels: tuple[str, ...], names: Mapping[str, int], default: int) -> int:
    """``resize_mode`` / ``control_mode``: the extension's text (any case) or its number."""
    value = unit.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().lower() in names:
        return names[value.strip().lower()]
    try:
        number = None if isinstance(value, bool) else _number(unit, name, where, default)
    except ValidationFailed:
        number = None
    if number is None or number not in set(names.values()):
        raise _refused(_at(where, name), f"Must be one of {', '.join(map(repr, labels))} or 0 to {len(labels) - 1}.")
    return int(number)


def _enabled(unit: Mapping[str, Any]) -> bool:
    value = unit.get("enabled", True)
    return value not in (False, 0, "false", "False", "0", None)


def module_name(value: Any, where: str) -> str:
    """Our preprocessor for the extension's module name (``None``: none); 422 naming field ``where``, listing ours."""
    text = "none" if value in (None, "", "None") else str(value).strip()
    name = ALIASES.get(text, ALIASES.get(text.lower(), text.lower()))
    if name not in PREPROCESSORS:
        raise _refused(where, f"Unknown module {text[:60]!r}; available: {', '.join(AVAILABLE)} "
                                          "(GET /controlnet/module_list).")
    if PREPROCESSORS[name].problem:
        raise _refused(where, f"Module {text[:60]!r} {PREPROCESSORS[name].problem}.")
    return name


def _image(unit: Mapping[str, Any], where: str, init_image: str | None) -> str:
    """The unit's control image: ``image`` (a string, or the extension's ``{image, mask}``) or
    ``input_image``; in img2img without one, the init image (as the extension does)."""
    image = unit.get("image")
    if isinstance(image, dict):
        image = image.get("image")
    image = image or unit.get("input_image")
    if not image:
        if init_image:
            return init_image
        raise _refused(f"{where}.image", "An enabled unit needs its image (image or input_image, base64).")
    if not isinstance(image, str):
        raise _refused(f"{where}.image", "Must be a base64 image.")
    return image


def _thresholds(unit: Mapping[str, Any], module: str, where: str, notes: list[str]) -> dict[str, float | None]:
    """``threshold_a``/``_b``: negative (the extension's -1) is the default; outside the range, brought into it."""
    limits = PREPROCESSORS[module].thresholds
    out: dict[str, float | None] = {}
    for index, name in enumerate(("threshold_a", "threshold_b")):
        value = _number(unit, name, where, -1)
        if value < 0 or index >= len(limits):
            out[name] = None
            continue
        kept = min(max(value, limits[index].minimum), limits[index].maximum)
        if kept != value:
            notes.append(f"{_at(where, name)} {value:g} brought to {kept:g} ({limits[index].name} of {module})")
        out[name] = kept
    return out


@dataclass
class A1111Units:
    """A request's units in our form, and which of them answer with their detected map."""

    units: list[dict[str, Any]] = field(default_factory=list)
    maps: list[int] = field(default_factory=list)
    adapters: list[dict[str, Any]] = field(default_factory=list)  # units with an ip-adapter_* module

    def into(self, core: dict[str, Any]) -> dict[str, Any]:
        """Our request ``core`` with these units."""
        return {**core, "controlnet": self.units, "ip_adapter": self.adapters}


def _ip_adapter(unit: Mapping[str, Any], where: str, init_image: str | None) -> dict[str, Any]:
    """An ``ip-adapter_*`` unit as our IP-Adapter unit: the model names the adapter in IP_ADAPTER_DIR."""
    model = unit.get("model")
    if not isinstance(model, str) or model.strip() in ("", "None", "none"):
        raise _refused(f"{where}.model", "An IP-Adapter unit needs its model (GET /api/v1/ip-adapters).")
    weight = _number(unit, "weight", where, 1.0)
    if not 0 <= weight <= CONTROL_WEIGHT_MAX:
        raise _refused(f"{where}.weight", f"Must be from 0 to {CONTROL_WEIGHT_MAX:g}.")
    start, end = _guidance(unit, where)
    return {"name": _HASH_SUFFIX.sub("", model.strip()), "image": _image(unit, where, init_image), "weight": weight,
            "start": start, "end": end}


def _guidance(unit: Mapping[str, Any], where: str) -> tuple[float, float]:
    """A unit's ``guidance_start`` and ``guidance_end``: the fractions of the steps it acts on."""
    start, end = _number(unit, "guidance_start", where, 0.0), _number(unit, "guidance_end", where, 1.0)
    for name, value in (("guidance_start", start), ("guidance_end", end)):
        if not 0 <= value <= 1:
            raise _refused(f"{where}.{name}", "Must be from 0 to 1.")
    if start >= end:
        raise _refused(f"{where}.guidance_start", "Must be below guidance_end (the unit must act on some steps).")
    return start, end


def _union_type(unit: Mapping[str, Any], module: str, where: str) -> str:
    """A Union model's control type: the unit's ``union_control_type`` ("Canny", "Soft Edge", ...), else its module's."""
    given = unit.get("union_control_type") or unit.get("control_type")
    if given in (None, "", "Unknown", "All"):
        if module in MODULE_UNION_TYPES:
            return MODULE_UNION_TYPES[module]
        raise _refused(f"{where}.union_control_type", "A ControlNet-Union unit with this module needs its union_control_type "
                                                      f"({', '.join(sorted(set(UNION_TYPE_NAMES.values())))}).")
    kind = UNION_TYPE_NAMES.get(re.sub(r"[^a-z]", "", str(given).lower()))
    if kind is None:
        raise _refused(f"{where}.union_control_type", f"Unknown control type {str(given)[:40]!r}.")
    return kind


def _unit(unit: Mapping[str, Any], where: str, init_image: str | None, notes: list[str], warnings: list[str],
          unions: set[str]) -> dict[str, Any]:
    module = module_name(unit.get("module"), f"{where}.module")
    model = unit.get("model")
    if not isinstance(model, str) or model.strip() in ("", "None", "none"):
        raise _refused(f"{where}.model", "An enabled unit needs a model (GET /controlnet/model_list).")
    model = _HASH_SUFFIX.sub("", model.strip())
    weight = _number(unit, "weight", where, 1.0)
    if not 0 <= weight <= CONTROL_WEIGHT_MAX:
        raise _refused(f"{where}.weight", f"Must be from 0 to {CONTROL_WEIGHT_MAX:g}.")
    start, end = _guidance(unit, where)
    mask = unit.get("mask") or unit.get("mask_image") or (unit["image"].get("mask") if isinstance(unit.get("image"), dict) else None)
    if mask:
        warnings.append(f"{where}.mask: not applied (a unit's own mask is not supported; the control map covers the image)")
    resolution = None
    if not unit.get("pixel_perfect") and PREPROCESSORS[module].run is not None:
        asked = _number(unit, "processor_res", where, -1)
        resolution = int(min(max(asked, PROCESSOR_RES_MIN), PROCESSOR_RES_MAX)) if asked > 0 else DEFAULT_PROCESSOR_RES
    return {
        "model": model, "image": _image(unit, where, init_image), "module": module,
        "type": _union_type(unit, module, where) if model in unions else "",
        "weight": weight, "start": start, "end": end, "processor_res": resolution,
        "resize_mode": _choice(unit, "resize_mode", where, CONTROL_RESIZE_LABELS, RESIZE_NAMES, 1),
        "control_mode": CONTROL_MODES[_choice(unit, "control_mode", where, CONTROL_LABELS, CONTROL_MODE_NAMES, 0)],
        **_thresholds(unit, module, where, notes),
    }


def _script_args(body: Mapping[str, Any]) -> list[Any]:
    scripts = body.get("alwayson_scripts")
    if not isinstance(scripts, dict):
        return []
    entry = next((value for name, value in scripts.items() if str(name).lower() == "controlnet"), None)
    args = entry.get("args") if isinstance(entry, dict) else entry
    if args is None:
        return []
    if not isinstance(args, list):
        raise _refused(WHERE, "Must be a list of ControlNet units.")
    return args


async def a1111_units(
    app: web.Application, body: Mapping[str, Any], init_image: str | None, notes: list[str], warnings: list[str],
) -> A1111Units:
    """The enabled units of ``alwayson_scripts.controlnet.args`` in our form (``enabled: false`` skipped)."""
    found = A1111Units()
    args = _script_args(body)
    if not args:
        return found
    unions = {entry.name for entry in await asyncio.to_thread(app[keys.CONTROLNETS].files) if entry.union}
    for index, unit in enumerate(args):
        where = f"{WHERE}[{index}]"
        if not isinstance(unit, dict):
            raise _refused(where, "Must be an object (a ControlNet unit).")
        if not _enabled(unit):
            continue
        if str(unit.get("module") or "").lower().startswith("ip-adapter"):
            found.adapters.append(_ip_adapter(unit, where, init_image))
            continue
        if unit.get("save_detected_map", True) not in (False, "false", 0):
            found.maps.append(len(found.units))
        found.units.append(_unit(unit, where, init_image, notes, warnings, unions))
    return found


async def detected_maps(app: web.Application, hashes: list[str]) -> list[str]:
    """The stored control maps (held by the request) as base64 PNGs, as the extension appends them to ``images``."""
    store = app[keys.STORE].inputs
    return await asyncio.to_thread(lambda: [base64.b64encode(store.blobs.get(store.key(h))).decode("ascii") for h in hashes])


# --- the extension's routes -------------------------------------------------------------------

async def version(request: web.Request) -> web.Response:
    """``GET /controlnet/version``."""
    return web.json_response({"version": API_VERSION})


async def model_list(request: web.Request) -> web.Response:
    """``GET /controlnet/model_list``: the usable ControlNets' names (what a unit's ``model`` takes)."""
    entries = await asyncio.to_thread(request.app[keys.CONTROLNETS].files)
    return web.json_response({"model_list": [entry.name for entry in entries if entry.problem is None]})


def _module_detail(name: str) -> dict[str, Any]:
    preprocessor = PREPROCESSORS[name]
    sliders: list[dict[str, Any]] = []
    if name != "none":
        sliders.append({"name": "Preprocessor Resolution", "value": DEFAULT_PROCESSOR_RES, "min": PROCESSOR_RES_MIN,
                        "max": PROCESSOR_RES_MAX})
    sliders += [{"name": t.name, "value": t.default, "min": t.minimum, "max": t.maximum} for t in preprocessor.thresholds]
    return {"model_free": name == "none", "sliders": sliders}


async def module_list(request: web.Request) -> web.Response:
    """``GET /controlnet/module_list``: the preprocessors that run here, with their sliders."""
    names = await asyncio.to_thread(runnable, request.app[keys.ANNOTATORS])
    return web.json_response({"module_list": list(names), "module_detail": {name: _module_detail(name) for name in names}})


async def control_types(request: web.Request) -> web.Response:
    """``GET /controlnet/control_types``: "All" and each type a ControlNet's name states, with its models."""
    entries = [entry for entry in await asyncio.to_thread(request.app[keys.CONTROLNETS].files) if entry.problem is None]
    names = await asyncio.to_thread(runnable, request.app[keys.ANNOTATORS])
    kinds = sorted({entry.control_type for entry in entries if entry.control_type})
    types = {"All": (list(names), [entry.name for entry in entries])}
    for kind in kinds:
        modules = [name for name in names if name == "none" or name.startswith(kind)] or ["none"]
        types[kind.capitalize()] = (modules, [entry.name for entry in entries if entry.control_type == kind])
    return web.json_response({"control_types": {
        label: {"module_list": modules, "model_list": ["None", *models],
                "default_option": next((module for module in modules if module != "none"), "none"),
                "default_model": models[0] if models else "None"}
        for label, (modules, models) in types.items()
    }})


async def settings(request: web.Request) -> web.Response:
    """``GET /controlnet/settings``: how many units a request may have."""
    return web.json_response({"control_net_unit_count": request.app[keys.SETTINGS].max_controlnets})


async def detect(request: web.Request) -> web.Response:
    """``POST /controlnet/detect``: ``{controlnet_module, controlnet_input_images, controlnet_processor_res,
    controlnet_threshold_a, controlnet_threshold_b}`` -> ``{images, info}``, the maps as the extension answers."""
    body = await read_json_object(request, untyped_is_json=True)
    module = module_name(body.get("controlnet_module"), "controlnet_module")
    images = body.get("controlnet_input_images")
    if not isinstance(images, list) or not images or not all(isinstance(image, str) for image in images):
        raise _refused("controlnet_input_images", "No image selected: send a list of base64 images.")
    unit = {name: body.get(f"controlnet_{name}") for name in ("processor_res", "threshold_a", "threshold_b")}
    notes: list[str] = []
    resolution = _number(body, "controlnet_processor_res", "", -1)
    data = {"module": module, "processor_res": int(min(max(resolution, PROCESSOR_RES_MIN), PROCESSOR_RES_MAX)) if resolution > 0 else None,
            **_thresholds(unit, module, "", notes)}
    settings_, annotate = request.app[keys.SETTINGS], request.app[keys.ANNOTATORS]
    loop = asyncio.get_running_loop()
    made = [await loop.run_in_executor(None, detect_map, settings_, annotate, {**data, "image": image},
                                       f"controlnet_input_images[{index}]", "controlnet_module")
            for index, image in enumerate(images)]
    return web.json_response({"images": [base64.b64encode(png).decode("ascii") for png, _ in made], "info": "Success"})
