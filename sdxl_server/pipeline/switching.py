"""Several models in one engine: what one loaded model carries, and which stay loaded.

Runs on the worker thread, between jobs. The running model is on the device; up to
``MODEL_CACHE - 1`` others stay there too, up to ``MODEL_RAM_CACHE`` more wait in CPU RAM (a
switch back is then a copy to the device instead of a load from disk), the rest are freed, least
recently used first.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .loras import LoraAdapters
from .sources import ModelSource


@dataclass
class LoadedModel:
    """One model with everything the engine keeps about it."""

    name: str
    source: ModelSource
    loras: LoraAdapters
    pipe: Any = None
    default_scheduler: Any = None
    schedulers: dict[tuple[str, str], Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    load_seconds: float | None = None
    state: str = "not_loaded"
    error: str | None = None
    where: str | None = None  # the device, "cpu" (RAM cache) or None (not loaded)


class ModelCache:
    """The models not running now, most recently used last."""

    def __init__(self, on_device: int, in_ram: int, device: str, movable: bool) -> None:
        self.on_device = max(on_device - 1, 0)  # the running one counts
        self.in_ram = in_ram
        self.device = device
        self.movable = movable  # False on a CPU or with CPU offload: nothing to move
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def where(self) -> dict[str, str]:
        return {name: model.where for name, model in self._models.items() if model.where}

    def put(self, model: LoadedModel) -> None:
        if model.pipe is None:
            return
        self._models[model.name] = model
        self._models.move_to_end(model.name)
        kept = list(reversed(self._models))  # newest first
        dropped = False
        for index, name in enumerate(kept):
            cached = self._models[name]
            if index < self.on_device:
                continue
            if index < self.on_device + self.in_ram:
                if self.movable and cached.where != "cpu":
                    cached.pipe.to("cpu")
                cached.where = "cpu" if self.movable else cached.where
                continue
            del self._models[name]
            cached.pipe, cached.where = None, None
            cached.loras.forget()
            dropped = True
        if dropped:
            gc.collect()  # free the dropped model's memory now, not at some later collection

    def take(self, name: str) -> LoadedModel | None:
        model = self._models.pop(name, None)
        if model is not None and self.movable and model.where == "cpu":
            model.pipe.to(self.device)
            model.where = self.device
        return model
