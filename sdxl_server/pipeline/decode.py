"""Latents to images, with SDXL's float16 VAE overflow guarded against, and tiled where memory is
short: a decode that would not fit the GPU's free memory (:func:`.memory.decode_needs_tiling`),
or that runs out of it, is done in tiles (hires fix's large images on a card whose memory profile
decodes untiled)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from .memory import decode_needs_tiling

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def decode_latents(pipe: Any, latents: torch.Tensor) -> tuple[list[Any], bool]:
    """Decode latents to PIL images; a non-finite half-precision decode is redone in float32."""
    vae = pipe.vae
    config = vae.config
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    dtype = vae.dtype
    image = _decode(vae, latents.to(dtype))
    upcast = False
    if dtype != torch.float32 and not torch.isfinite(image).all():
        # SDXL's original VAE overflows in float16 (black or NaN images): redo this decode in float32.
        log.warning("VAE decode in %s was not finite; decoding again in float32", dtype)
        vae.to(torch.float32)
        try:
            image = _decode(vae, latents.float())
        finally:
            vae.to(dtype)
        upcast = True
    return pipe.image_processor.postprocess(image.float(), output_type="pil"), upcast


def _decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """One decode: tiled when the VAE tiles already, when it would not fit the free memory, or
    when the untiled one runs out of memory."""
    if getattr(vae, "use_tiling", True):
        return vae.decode(latents, return_dict=False)[0]
    pixels = latents.shape[0] * latents.shape[-2] * latents.shape[-1] * 64
    free = torch.cuda.mem_get_info(latents.device)[0] if latents.is_cuda else None
    if decode_needs_tiling(pixels, free, str(latents.dtype).removeprefix("torch.")):
        log.info("decoding %.1f megapixels in tiles: %.1f GiB free on the GPU", pixels / 1e6, (free or 0) / 2**30)
        with _tiled(vae):
            return vae.decode(latents, return_dict=False)[0]
    try:
        return vae.decode(latents, return_dict=False)[0]
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    log.warning("the VAE decode of %.1f megapixels ran out of memory; decoding in tiles", pixels / 1e6)
    if latents.is_cuda:
        torch.cuda.empty_cache()
    with _tiled(vae):
        return vae.decode(latents, return_dict=False)[0]


@contextlib.contextmanager
def _tiled(vae: Any) -> Iterator[None]:
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()
