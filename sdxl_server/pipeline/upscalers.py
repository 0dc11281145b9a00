"""Upscaling one image on the worker thread: a built-in resampler or a model from the catalog.

:meth:`Upscalers.upscale` is the one entry (the upscale jobs and the hires fix's upscale both use
it). A model upscaler runs tiled (:mod:`.tiling`), again while the image is smaller than the
target (a 2x model asked for 4x runs twice, as A1111 does), then the result is resampled with
Lanczos to the exact size. One model is kept loaded, read again when its file changes on disk;
under the small-card memory profiles it visits the GPU only while it runs (the SDXL models have
the card the rest of the time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import JobCancelled, Unusable, short_message
from .tiling import TileReport, tile_count, upscale_tiled
from .upscaler_catalog import NONE, UpscalerCatalog, UpscalerEntry

log = logging.getLogger(__name__)

MAX_MODEL_PASSES = 3  # a model run again while the image is smaller than the target (A1111: 3)
RESAMPLERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


def target_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``size`` times ``scale``, rounded (at least one pixel each way)."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


@dataclass
class _Loaded:
    key: tuple[Path, int, int]  # (path, size, mtime_ns) when read
    descriptor: Any


class Upscalers:
    """The catalog's upscalers run on ``device`` (worker thread only). ``resident()`` says whether
    a model may stay on the GPU between uses (the ``high`` profile) or goes back to the CPU."""

    def __init__(
        self, catalog: UpscalerCatalog, device: str, dtype: str, *, tile: int, overlap: int,
        resident: Callable[[], bool] = lambda: True,
    ) -> None:
        self.catalog = catalog
        self.device = device
        self.dtype = dtype
        self.tile = tile
        self.overlap = overlap
        self.resident = resident
        self._loaded: _Loaded | None = None

    def upscale(
        self, image: Image.Image, name: str, scale: float, report: TileReport, cancelled: Callable[[], bool],
        *, size: tuple[int, int] | None = None,
    ) -> Image.Image:
        """``image`` upscaled ``scale`` times (or to ``size``) with the upscaler ``name``.
        ``report(done, total)`` counts tiles; :class:`JobCancelled` between two of them;
        :class:`Unusable` (about ``upscaler``) for a name or file that cannot be used."""
        entry = self.catalog.lookup(name)
        target = size or target_size(image.size, scale)
        if cancelled():
            raise JobCancelled("cancelled")
        if entry.builtin:
            result = image if entry.name == NONE else image.resize(target, RESAMPLERS[entry.name])
            report(1, 1)
            return result
        return self._with_model(entry, image.convert("RGB"), target, report, cancelled)

    def _with_model(
        self, entry: UpscalerEntry, image: Image.Image, target: tuple[int, int], report: TileReport,
        cancelled: Callable[[], bool],
    ) -> Image.Image:
        descriptor = self._descriptor(entry)
        model_scale = int(descriptor.scale)
        sizes = _pass_sizes(image.size, target, model_scale)
        if not sizes:  # already as large as the target: resampled down, as A1111 does
            report(1, 1)
            return image.resize(target, Image.Resampling.LANCZOS)
        counts = [tile_count(w, h, self.tile) for w, h in sizes]
        self._place(descriptor, self.device)
        try:
            done = 0
            for index, (width, height) in enumerate(sizes):
                rest = sum(counts[index + 1:])

                def tiles_done(count: int, total: int, offset: int = done, rest: int = rest) -> None:
                    report(offset + count, offset + total + rest)

                tensor = _to_tensor(image, descriptor)
                output = upscale_tiled(descriptor, tensor, model_scale, tile=self.tile, overlap=self.overlap,
                                       report=tiles_done, cancelled=cancelled, free_memory=self._free_memory)
                image = _to_image(output)
                done += counts[index]
        finally:
            if not self.resident():
                self._place(descriptor, "cpu")
                self._free_memory()
        return image if image.size == target else image.resize(target, Image.Resampling.LANCZOS)

    def _descriptor(self, entry: UpscalerEntry) -> Any:
        """The loaded model of ``entry``, read again when its file changed since (replaced on disk)."""
        assert entry.path is not None
        from .upscaler_models import load_descriptor

        try:
            stat = entry.path.stat()
            key = (entry.path, stat.st_size, stat.st_mtime_ns)
            if self._loaded is None or self._loaded.key != key:
                self._drop()
                self._loaded = _Loaded(key, load_descriptor(entry.path))
                log.info("loaded upscaler %s (%s, %dx)", entry.name, entry.architecture, self._loaded.descriptor.scale)
        except Exception as exc:
            raise Unusable(f"upscaler: {entry.name!r} cannot be read now (changed on disk?): {short_message(exc)}",
                           fields={"upscaler": [f"Unusable: {short_message(exc)}."]}) from exc
        return self._loaded.descriptor

    def _place(self, descriptor: Any, device: str) -> None:
        dtype = torch.float32
        if device.startswith("cuda") and self.dtype != "float32":
            dtype = torch.float16 if descriptor.supports_half else torch.bfloat16 if descriptor.supports_bfloat16 else torch.float32
        descriptor.to(torch.device(device), dtype)

    def _drop(self) -> None:
        self._loaded = None
        self._free_memory()

    def _free_memory(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def close(self) -> None:
        self._drop()


def _pass_sizes(size: tuple[int, int], target: tuple[int, int], scale: int) -> list[tuple[int, int]]:
    """The input size of each model pass: run while the image is smaller than ``target``."""
    if scale <= 1:
        return [size]
    sizes, (width, height) = [], size
    while (width < target[0] or height < target[1]) and len(sizes) < MAX_MODEL_PASSES:
        sizes.append((width, height))
        width, height = width * scale, height * scale
    return sizes


def _to_tensor(image: Image.Image, descriptor: Any) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    return tensor.to(descriptor.device, descriptor.dtype)


def _to_image(tensor: torch.Tensor) -> Image.Image:
    array = (tensor[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")



def engine_upscalers(settings: Any, device: str, dtype: str, tiny: bool, resident: Callable[[], bool]) -> Upscalers:
    """The engine's upscalers: ``UPSCALERS_DIR``'s, and the tiny one beside the tiny model (offline demo)."""
    extra = {}
    if tiny:
        from .tiny import TINY_UPSCALER, ensure_tiny_upscaler

        extra[TINY_UPSCALER] = ensure_tiny_upscaler(settings.tiny_cache)
    return Upscalers(UpscalerCatalog(settings.upscalers_dir, extra), device, dtype,
                     tile=settings.upscale_tile, overlap=settings.upscale_tile_overlap, resident=resident)
