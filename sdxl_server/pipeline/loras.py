"""LoRAs on the loaded pipeline, through diffusers' PEFT integration, set per job.

Runs on the worker thread. Each LoRA file is loaded once as a named adapter
(``load_lora_weights(..., adapter_name=...)``) and kept while it is among the ``LORA_CACHE`` most
recently used; a job's set is made active with ``set_adapters`` and its weights. A job without
LoRAs runs with the adapters disabled (``disable_lora``): PEFT then calls the untouched base layers,
so its pixels equal those of a server that never loaded a LoRA.

Under ``COMPILE`` the UNet is a compiled graph, and PEFT's layers in its module tree would make
torch compile it again for every new adapter and every set. There a job's LoRAs are instead
*fused* into the base weights (loaded, weighted, ``fuse_lora``, then their PEFT layers removed):
the module tree the graph was compiled for is back, its weights changed in place, so the next
image runs the same compiled code with no LoRA cost per step. The original weights of every layer
a LoRA touched are kept (on the CPU) and copied back before the next set, so a job without LoRAs
gets the untouched base again. diffusers' ``enable_lora_hotswap`` was the other way; it keeps LoRA
layers in the graph (their cost at every step), swaps one adapter at a time, and not in the text
encoders, so a job's several weighted LoRAs would not fit it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import GenerationFailed, Unusable, short_message
from .lora_files import LoraCatalog, LoraFile, a1111_hash
from .weights import lift_lora_weights

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    adapter: str
    file: LoraFile
    short_hash: str
    on_disk: tuple[Any, ...] | None  # the file as it was when loaded (a changed file is loaded again)


def _on_disk(path: Any) -> tuple[Any, ...] | None:
    """The file's path, size and modification time now (the catalog's own may be older)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (str(path), stat.st_size, stat.st_mtime_ns)


class LoraAdapters:
    """The adapters loaded into one pipeline, least recently used first."""

    def __init__(self, catalog: LoraCatalog, cache_size: int) -> None:
        self.catalog = catalog
        self.cache_size = cache_size
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._counter = 0
        self._enabled = False
        self.last_load_s: float | None = None
        self._fusing = False  # whether sets are fused (COMPILE) rather than kept as adapters
        self._fused: tuple[tuple[str, float], ...] = ()  # the set fused into the weights
        self._fused_hashes: dict[str, str] = {}
        self._fused_files: list[Any] = []
        self._originals: list[tuple[Any, Any]] = []  # (parameter, its original values on the CPU)

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def apply(self, pipe: Any, wanted: tuple[tuple[str, float], ...], *, fused: bool = False) -> dict[str, str]:
        """Make exactly ``wanted`` active on ``pipe``; return ``{name: short hash}`` for the metadata.
        ``fused`` (a compiled UNet): fuse them into the weights rather than keep them as adapters.
        Changing between the two ways first undoes what the other left (fused weights, adapters)."""
        if fused != self._fusing:
            self._restore_originals()
            if self._loaded:
                pipe.unload_lora_weights()
                self._loaded.clear()
            self._enabled, self._fusing = False, fused
        return self._apply_fused(pipe, wanted) if fused else self._apply_adapters(pipe, wanted)

    def _apply_adapters(self, pipe: Any, wanted: tuple[tuple[str, float], ...]) -> dict[str, str]:
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

    def _apply_fused(self, pipe: Any, wanted: tuple[tuple[str, float], ...]) -> dict[str, str]:
        if wanted == self._fused and self._fused_files == self._files(wanted):
            return self._fused_hashes  # the same set, from the same files: nothing to do
        self._restore_originals()
        hashes: dict[str, str] = {}
        if wanted:
            try:
                hashes = self._apply_adapters(pipe, wanted)
                self._originals = [(p, p.detach().to("cpu", copy=True)) for p in _lora_base_parameters(pipe)]
                pipe.fuse_lora(components=["unet", "text_encoder", "text_encoder_2"],
                               adapter_names=self.adapter_names([name for name, _ in wanted]))
            except BaseException:
                self._restore_originals()  # whatever was fused goes: the next job gets the base
                raise
            finally:
                pipe.unload_lora_weights()  # the PEFT layers go; fused weights stay
                self._loaded.clear()
                self._enabled = False
        self._fused, self._fused_hashes, self._fused_files = wanted, hashes, self._files(wanted)
        return hashes

    def _files(self, wanted: tuple[tuple[str, float], ...]) -> list[Any]:
        """What is on disk for each of ``wanted`` now (a changed or deleted file is another set)."""
        found = [self.catalog.find(name) for name, _ in wanted]
        return [None if f is None else (_on_disk(f.path), f.problem) for f in found]

    def _restore_originals(self) -> None:
        for parameter, original in self._originals:
            parameter.data.copy_(original)
        self._originals, self._fused, self._fused_hashes, self._fused_files = [], (), {}, []

    def adapter_names(self, names: list[str]) -> list[str]:
        """The PEFT adapter names of loaded LoRAs (to fuse them, say)."""
        return [self._loaded[name].adapter for name in names]

    def forget(self) -> None:
        """The pipeline is gone (model unloaded): its adapters and fused weights with it."""
        self._loaded.clear()
        self._enabled = False
        self._originals, self._fused, self._fused_hashes, self._fused_files = [], (), {}, []

    def _ensure(self, pipe: Any, name: str, keep: set[str]) -> _Loaded:
        file = self.catalog.find(name)
        if file is None or file.problem:
            raise GenerationFailed(f"LoRA {name!r} is no longer usable: {file.problem if file else 'not in LORA_DIR'}")
        loaded = self._loaded.get(name)
        if loaded is not None and loaded.on_disk != _on_disk(file.path):
            self._unload(pipe, name)  # the file changed on disk
            loaded = None
        if loaded is None:
            loaded = self._load(pipe, file)
            self._evict(pipe, keep)
        self._loaded.move_to_end(name)
        return loaded

    @staticmethod
    def _misfit(file: LoraFile, problem: str) -> Unusable:
        """A file that does not fit the running model is the request's problem (422), not the server's."""
        message = f"LoRA {file.name!r} ({file.path.name}) does not fit this model: {problem}"
        return Unusable(message, fields={"loras": [message]})

    def _load(self, pipe: Any, file: LoraFile) -> _Loaded:
        width = getattr(pipe.unet.config, "cross_attention_dim", None)
        if file.context_width is not None and width is not None and file.context_width != width:
            family = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}.get(file.context_width, "another model")
            raise self._misfit(file, f"it was made for {family} ({file.context_width}-wide text conditioning), "
                                     f"this model's is {width}-wide")
        self._counter += 1
        on_disk = _on_disk(file.path)  # before reading it: a change while it loads is seen next time
        adapter = f"lora{self._counter}"  # PEFT adapter names become module keys: no dots or spaces
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():  # PEFT warns on every adapter after the first: expected here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(str(file.path), adapter_name=adapter)
            lift_lora_weights(pipe)  # beside float8 weights (FP8_WEIGHTS), PEFT made them float8 too
        except Exception as exc:  # noqa: BLE001 - a file diffusers cannot apply is the request's problem
            self._delete_quietly(pipe, adapter)
            raise self._misfit(file, short_message(exc)) from exc
        self.last_load_s = time.perf_counter() - started
        entry = _Loaded(adapter, file, a1111_hash(file.path)[:12], on_disk)
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


def _lora_base_parameters(pipe: Any) -> list[Any]:
    """The weights (and biases) of every layer a loaded LoRA adapter wraps, in every component."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: dict[int, Any] = {}
    for component in (pipe.unet, getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)):
        for module in component.modules() if component is not None else ():
            if isinstance(module, BaseTunerLayer):
                base = module.get_base_layer()
                for parameter in (base.weight, getattr(base, "bias", None)):
                    if parameter is not None:
                        found[id(parameter)] = parameter
    return list(found.values())
