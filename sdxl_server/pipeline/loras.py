"""LoRAs on the loaded pipeline, through diffusers' PEFT integration, set per job.

Runs on the worker thread. Each LoRA file is loaded once as a named adapter
(``load_lora_weights(..., adapter_name=...)``) and kept while it is among the ``LORA_CACHE`` most
recently used; a job's set is made active with ``set_adapters`` and its weights. A job without
LoRAs runs with the adapters disabled (``disable_lora``): PEFT then calls the untouched base layers,
so its pixels equal those of a server that never loaded a LoRA.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import GenerationFailed, ValidationFailed, short_message
from .lora_files import LoraCatalog, LoraFile, a1111_hash

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    adapter: str
    file: LoraFile
    short_hash: str


class LoraAdapters:
    """The adapters loaded into one pipeline, least recently used first."""

    def __init__(self, catalog: LoraCatalog, cache_size: int) -> None:
        self.catalog = catalog
        self.cache_size = cache_size
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._counter = 0
        self._enabled = False
        self.last_load_s: float | None = None

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def apply(self, pipe: Any, wanted: tuple[tuple[str, float], ...]) -> dict[str, str]:
        """Make exactly ``wanted`` active on ``pipe``; return ``{name: short hash}`` for the metadata."""
        if not wanted:
            if self._enabled:
                pipe.disable_lora()
                self._enabled = False
            return {}
        entries = [self._ensure(pipe, name, keep={n for n, _ in wanted}) for name, _ in wanted]
        pipe.enable_lora()  # after a job without LoRAs they are disabled, new ones included
        pipe.set_adapters([entry.adapter for entry in entries], adapter_weights=[weight for _, weight in wanted])
        self._enabled = True
        return {name: entry.short_hash for (name, _), entry in zip(wanted, entries)}

    def adapter_names(self, names: list[str]) -> list[str]:
        """The PEFT adapter names of loaded LoRAs (to fuse them, say)."""
        return [self._loaded[name].adapter for name in names]

    def forget(self) -> None:
        """The pipeline is gone (model unloaded): its adapters with it."""
        self._loaded.clear()
        self._enabled = False

    def _ensure(self, pipe: Any, name: str, keep: set[str]) -> _Loaded:
        file = self.catalog.find(name)
        if file is None or file.problem:
            raise GenerationFailed(f"LoRA {name!r} is no longer usable: {file.problem if file else 'not in LORA_DIR'}")
        loaded = self._loaded.get(name)
        if loaded is not None and (loaded.file.path, loaded.file.mtime, loaded.file.size) != (file.path, file.mtime, file.size):
            self._unload(pipe, name)  # the file changed on disk
            loaded = None
        if loaded is None:
            loaded = self._load(pipe, file)
            self._evict(pipe, keep)
        self._loaded.move_to_end(name)
        return loaded

    @staticmethod
    def _misfit(file: LoraFile, problem: str) -> ValidationFailed:
        """A file that does not fit the running model is the request's problem (422), not the server's."""
        message = f"LoRA {file.name!r} ({file.path.name}) does not fit this model: {problem}"
        return ValidationFailed(message, fields={"loras": [message]})

    def _load(self, pipe: Any, file: LoraFile) -> _Loaded:
        width = getattr(pipe.unet.config, "cross_attention_dim", None)
        if file.context_width is not None and width is not None and file.context_width != width:
            family = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}.get(file.context_width, "another model")
            raise self._misfit(file, f"it was made for {family} ({file.context_width}-wide text conditioning), "
                                     f"this model's is {width}-wide")
        self._counter += 1
        adapter = f"lora{self._counter}"  # PEFT adapter names become module keys: no dots or spaces
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():  # PEFT warns on every adapter after the first: expected here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(str(file.path), adapter_name=adapter)
        except Exception as exc:  # noqa: BLE001 - a file diffusers cannot apply is the request's problem
            self._delete_quietly(pipe, adapter)
            raise self._misfit(file, short_message(exc)) from exc
        self.last_load_s = time.perf_counter() - started
        entry = _Loaded(adapter, file, a1111_hash(file.path)[:12])
        self._loaded[file.name] = entry
        log.info("loaded LoRA %s (%s) in %.2fs", file.name, file.layout, self.last_load_s)
        return entry

    def _evict(self, pipe: Any, keep: set[str]) -> None:
        for name in list(self._loaded):
            if len(self._loaded) <= self.cache_size:
                break
            if name not in keep:
                self._unload(pipe, name)

    def _unload(self, pipe: Any, name: str) -> None:
        entry = self._loaded.pop(name)
        self._delete_quietly(pipe, entry.adapter)

    @staticmethod
    def _delete_quietly(pipe: Any, adapter: str) -> None:
        try:
            pipe.delete_adapters(adapter)
        except Exception:  # noqa: BLE001 - it was never (fully) loaded
            log.debug("adapter %s was not loaded", adapter, exc_info=True)
