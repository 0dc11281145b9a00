"""The speed-option sections: a batch of images against one at a time, and the PNG level."""

from __future__ import annotations

import io
import time
from typing import Any

from PIL import Image

from .client import Client
from .options import params_from_body
from .stats import summarize


async def section_batch(client: Client) -> dict[str, Any]:
    """Images per second with ``batch_size`` images per pipeline call against one per call."""
    opts = client.opts
    by_size: dict[str, Any] = {}
    for size in (1, opts.batch_size):
        seconds = []
        for _ in range(opts.batch_runs + 1):  # the first run warms up this batch size
            params = params_from_body(opts.body(client.fresh_seed(), num_images=size))
            taken, _ = await client.direct(params)
            seconds.append(taken)
        runs = summarize(seconds[1:])
        by_size[str(size)] = {"s_per_call": runs, "images_per_s": round(size / runs["median"], 4)}
    one, many = by_size["1"]["images_per_s"], by_size[str(opts.batch_size)]["images_per_s"]
    return {
        "params": {k: opts.body()[k] for k in ("width", "height", "steps")},
        "runs": opts.batch_runs,
        "by_batch": by_size,
        "speedup": round(many / one, 4),
    }


def smooth_image(width: int, height: int) -> Image.Image:
    """A photo stand-in: smooth gradients with some texture (a random-weights model makes noise,
    which no level compresses; real images compress about as this one does)."""
    red = Image.linear_gradient("L").resize((width, height))
    green = Image.radial_gradient("L").resize((width, height))
    blue = Image.effect_noise((width, height), 24).point(lambda v: v // 2 + 64)
    return Image.merge("RGB", (red, green, blue))


async def section_png(client: Client) -> dict[str, Any]:
    """Encode time and size of the benchmark's image at each zlib level."""
    opts = client.opts
    params = params_from_body(opts.body(client.fresh_seed()))
    _, record = await client.direct(params)
    images = {"generated": client.engine.last_images[0], "smooth": smooth_image(opts.width, opts.height)}
    results: dict[str, Any] = {}
    for name, image in images.items():
        per_level = {}
        for level in opts.png_levels:
            seconds, size = [], 0
            for _ in range(3):
                buffer = io.BytesIO()
                started = time.perf_counter()
                image.save(buffer, format="PNG", compress_level=level)
                seconds.append(time.perf_counter() - started)
                size = buffer.tell()
            per_level[str(level)] = {"encode_ms": round(min(seconds) * 1000, 2), "bytes": size}
        results[name] = per_level
    return {"size": {"width": opts.width, "height": opts.height}, "levels": list(opts.png_levels), "images": results}
