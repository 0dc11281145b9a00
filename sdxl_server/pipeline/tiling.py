"""Running an upscaler over an image in tiles, so the largest images fit small cards.

Each tile is a core of ``tile`` pixels square, run with ``overlap`` more pixels of its
neighbours on every side (clamped at the image's edges); only the core's output is kept. Where
``overlap`` covers the network's reach, the result is the untiled one's, pixel for pixel, and
memory follows the tile, not the image (the output is gathered on the CPU).

On out of memory the tile halves and the image starts again, down to a floor (as ComfyUI does);
progress counts tiles, and a cancelled job stops between two of them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import JobCancelled

log = logging.getLogger(__name__)

MIN_TILE = 64  # the floor the tile halves down to on out of memory (or the configured tile, if smaller)

TileReport = Callable[[int, int], None]  # (tiles done, tiles in all)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class Box:
    """A tile's core (what it writes) and its padded area (what it reads), in input pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    px0: int
    py0: int
    px1: int
    py1: int


def tiles(width: int, height: int, tile: int, overlap: int) -> list[Box]:
    """The tiles covering a ``width`` x ``height`` image, row by row."""
    boxes = []
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
            boxes.append(Box(x0, y0, x1, y1, max(x0 - overlap, 0), max(y0 - overlap, 0),
                             min(x1 + overlap, width), min(y1 + overlap, height)))
    return boxes


def tile_count(width: int, height: int, tile: int) -> int:
    return math.ceil(width / tile) * math.ceil(height / tile)


def _run_tiles(
    model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int, boxes: list[Box],
    report: TileReport, cancelled: Callable[[], bool],
) -> torch.Tensor:
    """``image`` (1, C, H, W, on the model's device) through ``model`` tile by tile; the output on the CPU."""
    _, channels, height, width = image.shape
    output = torch.empty((1, channels, height * scale, width * scale), dtype=torch.float32)
    for done, box in enumerate(boxes):
        if cancelled():
            raise JobCancelled("cancelled")
        with torch.inference_mode():
            result = model(image[:, :, box.py0:box.py1, box.px0:box.px1])
        top, left = (box.y0 - box.py0) * scale, (box.x0 - box.px0) * scale
        core = result[:, :, top:top + (box.y1 - box.y0) * scale, left:left + (box.x1 - box.x0) * scale]
        output[:, :, box.y0 * scale:box.y1 * scale, box.x0 * scale:box.x1 * scale] = core.float().cpu()
        report(done + 1, len(boxes))
    return output


def upscale_tiled(
    model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int, *, tile: int, overlap: int,
    report: TileReport, cancelled: Callable[[], bool], free_memory: Callable[[], None] = lambda: None,
    floor: int = MIN_TILE,
) -> torch.Tensor:
    """``image`` (1, C, H, W) upscaled ``scale`` times by ``model``, in tiles. On out of memory
    the tile halves (``free_memory`` runs first) down to ``floor``; below it the error is raised."""
    floor = min(floor, tile)
    for size in _halvings(tile, floor):
        try:
            return _run_tiles(model, image, scale, tiles(image.shape[3], image.shape[2], size, overlap), report, cancelled)
        except Exception as exc:
            if not is_out_of_memory(exc) or size // 2 < floor:
                raise
            free_memory()
            log.warning("upscaling ran out of memory with %d px tiles: trying %d px", size, size // 2)
    raise AssertionError("unreachable")  # the last size raises or returns


def _halvings(tile: int, floor: int) -> Iterator[int]:
    while tile >= floor:
        yield tile
        tile //= 2
