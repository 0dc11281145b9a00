"""Latents to images, with SDXL's float16 VAE overflow guarded against."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


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
    image = vae.decode(latents.to(dtype), return_dict=False)[0]
    upcast = False
    if dtype != torch.float32 and not torch.isfinite(image).all():
        # SDXL's original VAE overflows in float16 (black or NaN images): redo this decode in float32.
        log.warning("VAE decode in %s was not finite; decoding again in float32", dtype)
        vae.to(torch.float32)
        try:
            image = vae.decode(latents.float(), return_dict=False)[0]
        finally:
            vae.to(dtype)
        upcast = True
    return pipe.image_processor.postprocess(image.float(), output_type="pil"), upcast

# -- reporting --------------------------------------------------------------
