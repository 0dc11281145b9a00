"""An upscale job (``POST /api/v1/upscale``, A1111's extras): the input image through the
upscaler, a second upscaler blended in if asked (A1111's ``extras_upscaler_2_visibility``), then
the centre crop; progress counts tiles over both upscalers."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image

from ..errors import OutOfMemory
from ..params import GenerationParams
from .plan import Generation
from .tiling import MIN_TILE, is_out_of_memory
from .upscaler_catalog import NONE
from .upscalers import Upscalers


def run_upscale_job(
    upscalers: Upscalers, params: GenerationParams, inputs: Mapping[str, Any],
    on_step: Callable[[int, int, Any], None], cancelled: Callable[[], bool],
) -> Generation:
    """The job's one image at ``params.width`` x ``params.height`` (then cropped)."""
    options, image = params.upscale, inputs["upscale"]
    size = (params.width, params.height)
    blend = options.upscaler_2 != NONE and options.visibility_2 > 0
    started = time.perf_counter()
    first_total = [0]  # the first upscaler's tiles; until it ends, the second is guessed at as many

    def first(done: int, total: int) -> None:
        first_total[0] = total
        on_step(done, total * (2 if blend else 1), None)

    def then(done: int, total: int) -> None:
        on_step(first_total[0] + done, first_total[0] + total, None)

    try:
        result = upscalers.upscale(image, options.upscaler, 0, first, cancelled, size=size)
        if blend:
            second = upscalers.upscale(image, options.upscaler_2, 0, then, cancelled, size=size)
            result = Image.blend(result.convert("RGB"), second.convert("RGB"), options.visibility_2)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        upscalers.close()  # the model goes, and the CUDA cache with it
        raise OutOfMemory(f"the device ran out of memory upscaling to {size[0]}x{size[1]} even in {MIN_TILE} px tiles: "
                          "lower UPSCALE_TILE_OVERLAP, upscale less at a time, or close other GPU programs") from exc
    if options.crop_width and options.crop_height:
        result = centre_crop(result, (options.crop_width, options.crop_height))
    return Generation([result], {"inference_s": round(time.perf_counter() - started, 4), "decode_s": 0.0,
                                 "sampler": "none", "seeds": [params.seed]})


def centre_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` centred on a ``size`` canvas (cropped where larger, black where smaller), as A1111 crops."""
    if image.size == size:
        return image
    canvas = Image.new("RGB", size)
    canvas.paste(image, (size[0] // 2 - image.width // 2, size[1] // 2 - image.height // 2))
    return canvas
