"""ControlNets on the worker: loading them on first use (LRU, ``CONTROLNET_CACHE``), and what one
request's units add to its pipeline call.

Each unit's weight, start and end become diffusers' ``controlnet_conditioning_scale`` and
``control_guidance_start``/``_end`` (per unit with several, which run as diffusers'
``MultiControlNetModel``). The extension's control modes have no diffusers argument per unit, so
they are applied to each ControlNet's output by a forward hook held while the request runs:
"My prompt is more important" scales the residuals down from the deepest layer
(``0.825 ** (n - 1 - i)``, the extension's soft injection), "ControlNet is more important" does
that too and leaves the unconditional half of a guided batch uncontrolled (its CFG injection).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ..errors import ValidationFailed
from ..params import ControlUnit, GenerationParams
from .controlnet_files import UNION_TYPES, ControlNetCatalog, ControlNetFile
from .controlnet_single import load_single_file

log = logging.getLogger(__name__)

SOFT_INJECTION = 0.825  # the extension's per-layer factor for the soft control modes


def _load(entry: ControlNetFile, dtype: torch.dtype, base: Mapping[str, Any], index: int) -> Any:
    """A diffusers folder with ``from_pretrained``; a single file by :mod:`.controlnet_single`
    (its config from its tensors and the running UNet's config ``base``), 422 when it does not fit."""
    import diffusers

    if entry.layout == "folder":
        kind = diffusers.ControlNetUnionModel if entry.union else diffusers.ControlNetModel
        return kind.from_pretrained(str(entry.path), dtype=dtype)
    try:
        return load_single_file(entry.path, entry.union, dtype, base)
    except (ValueError, RuntimeError, OSError) as exc:
        message = f"ControlNet {entry.name!r} cannot be loaded: {str(exc)[:300]}."
        raise ValidationFailed(message, fields={f"controlnet[{index}].model": [message]}) from exc


class ControlNetCache:
    """The loaded ControlNets, least recently used dropped first beyond ``capacity``. With ``park``
    (the small-card profiles' CPU offload) they wait in CPU memory and visit the device only while
    a job runs them (:meth:`on_device`)."""

    def __init__(self, catalog: ControlNetCatalog, capacity: int, device: str, dtype: torch.dtype) -> None:
        self.catalog, self.capacity, self.device, self.dtype = catalog, capacity, device, dtype
        self.park = False
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.load_seconds: dict[str, float] = {}

    def get(self, name: str, index: int = 0, base: Mapping[str, Any] | None = None) -> Any:
        """The ControlNet ``name``, loaded (and moved to the device) if it is not; ``base``, the
        running UNet's config, completes a single file's (see :mod:`.controlnet_single`)."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
        entry = self.catalog.find(name)
        if entry is None or entry.problem is not None:
            message = f"ControlNet {name!r} cannot be used: {entry.problem if entry else 'no longer in CONTROLNET_DIR'}."
            raise ValidationFailed(message, fields={f"controlnet[{index}].model": [message]})
        started = time.perf_counter()
        model = _load(entry, self.dtype, base or {}, index).to("cpu" if self.park else self.device).eval()
        self.load_seconds[name] = time.perf_counter() - started
        log.info("loaded ControlNet %s in %.2fs", name, self.load_seconds[name])
        with self._lock:
            self._loaded[name] = model
            while len(self._loaded) > self.capacity:
                dropped, _ = self._loaded.popitem(last=False)
                log.info("unloaded ControlNet %s (CONTROLNET_CACHE=%d)", dropped, self.capacity)
        return model

    @contextlib.contextmanager
    def on_device(self, nets: Sequence[Any]) -> Iterator[None]:
        """``nets`` on the device while the block runs; parked ones go back to the CPU after it."""
        if not self.park:
            yield
            return
        for net in nets:
            net.to(self.device)
        try:
            yield
        finally:
            for net in nets:
                net.to("cpu")

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def forget(self) -> None:
        with self._lock:
            self._loaded.clear()


def check_fits(nets: Sequence[Any], unet: Any) -> None:
    """422 when a ControlNet was made for another model's shapes (its text width differs from the UNet's)."""
    width = unet.config.cross_attention_dim
    for index, net in enumerate(nets):
        if net.config.cross_attention_dim != width:
            message = (f"This ControlNet conditions on {net.config.cross_attention_dim}-wide text, the running model on "
                       f"{width}: it was made for another model family.")
            raise ValidationFailed(f"controlnet[{index}].model: {message}", fields={f"controlnet[{index}].model": [message]})


def _unit_error(index: int, field: str, message: str) -> ValidationFailed:
    where = f"controlnet[{index}].{field}"
    return ValidationFailed(f"{where}: {message}", fields={where: [message]})


def check_union(nets: Sequence[Any], units: Sequence[ControlUnit]) -> bool:
    """Whether the units run on ControlNet-Union models (each then names its control type); 422
    when union and plain ControlNets are mixed (diffusers runs one kind per call)."""
    unions = [hasattr(net.config, "num_control_type") for net in nets]
    if any(unions) and not all(unions):
        raise _unit_error(unions.index(not unions[0]), "model",
                          "ControlNet-Union models and other ControlNets cannot be mixed in one request.")
    if not unions[0]:
        for index, unit in enumerate(units):
            if unit.type:
                raise _unit_error(index, "type", f"Only a ControlNet-Union model takes a control type; {unit.model!r} is not one.")
    return unions[0]


def union_types(nets: Sequence[Any], units: Sequence[ControlUnit]) -> list[int]:
    """diffusers' ``control_mode`` for Union units: each unit's control type as the model's slot."""
    slots = []
    for index, (net, unit) in enumerate(zip(nets, units)):
        known = UNION_TYPES[: net.config.num_control_type]
        if unit.type not in known:
            raise _unit_error(index, "type", f"A ControlNet-Union unit needs its control type, one of {', '.join(known)}.")
        slots.append(known.index(unit.type))
    return slots


def control_arguments(units: Sequence[ControlUnit]) -> dict[str, Any]:
    """The diffusers arguments of the units beside their control images."""
    if len(units) == 1:
        unit = units[0]
        return {"controlnet_conditioning_scale": unit.weight, "control_guidance_start": unit.start,
                "control_guidance_end": unit.end}
    return {
        "controlnet_conditioning_scale": [unit.weight for unit in units],
        "control_guidance_start": [unit.start for unit in units],
        "control_guidance_end": [unit.end for unit in units],
    }


def _mode_hook(mode: str, guided: bool):
    def hook(_module: Any, _args: Any, output: Any) -> Any:
        down, mid = output
        samples = [*down, mid]
        count = len(samples)
        scaled = [sample * SOFT_INJECTION ** (count - 1 - i) for i, sample in enumerate(samples)]
        if mode == "controlnet" and guided:
            scaled = [torch.cat([torch.zeros_like(s[: s.shape[0] // 2]), s[s.shape[0] // 2:]]) for s in scaled]
        return scaled[:-1], scaled[-1]

    return hook


@contextlib.contextmanager
def control_modes(nets: Sequence[Any], units: Sequence[ControlUnit], params: GenerationParams) -> Iterator[None]:
    """The units' control modes on their ControlNets' outputs while the block runs (balanced: unchanged)."""
    guided = params.guidance_scale > 1
    handles = [net.register_forward_hook(_mode_hook(unit.control_mode, guided))
               for net, unit in zip(nets, units) if unit.control_mode != "balanced"]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
