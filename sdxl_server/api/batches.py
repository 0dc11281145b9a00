"""Requests for more images than one pipeline call may make (``MAX_BATCH``), for the compatible APIs.

OpenAI clients may ask for ``n`` up to 10 and A1111 clients for any ``batch_size`` x ``n_iter``;
the images are made by consecutive jobs of at most ``MAX_BATCH`` images each, and image ``i`` of
the whole request still uses seed ``seed + i``, as one large batch would. Never imports torch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from ..params import MAX_SEED, GenerationParams
from . import keys


async def generate_images(app: web.Application, params: GenerationParams, count: int) -> tuple[list[dict[str, Any]], str]:
    """Make ``count`` images like ``params``: each image's ``{id, image_url, meta}``, and the first job's id."""
    per_call = app[keys.SETTINGS].max_batch
    images: list[dict[str, Any]] = []
    first_job = ""
    for start in range(0, count, per_call):
        chunk = replace(params, num_images=min(per_call, count - start), seed=(params.seed + start) % (MAX_SEED + 1))
        result = await app[keys.QUEUE].generate(chunk)
        first_job = first_job or result["id"]
        images.extend(result.get("images") or [{"id": result["meta"]["id"], "image_url": result["image_url"], "meta": result["meta"]}])
    return images, first_job
