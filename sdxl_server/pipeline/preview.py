"""Cheap previews of an image in progress: latents to RGB with SDXL's published linear factors.

A 4x3 matrix and a bias map SDXL's four latent channels to RGB (the approximation ComfyUI and
others use for live previews); no extra weights and no VAE on the hot path. A 1024x1024 image
gives a 128x128 JPEG of a few kilobytes. Runs on the worker thread; never imports aiohttp.
"""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image

SDXL_LATENT_RGB_FACTORS = (
    #  R        G        B
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


def latent_preview(latents: torch.Tensor, max_side: int = 256) -> Image.Image:
    """An RGB image of the first latent of a batch ``(B, 4, h, w)``, at latent resolution
    (one pixel per 8x8 block), shrunk to ``max_side`` if larger."""
    latent = latents[0].detach().to("cpu", torch.float32)
    factors = torch.tensor(SDXL_LATENT_RGB_FACTORS)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS)
    rgb = torch.einsum("chw,cr->hwr", latent, factors) + bias
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    return image


def preview_data_url(latents: torch.Tensor, quality: int = 70) -> str:
    """The preview as a ``data:image/jpeg;base64,...`` URL, ready for an ``<img src>``."""
    buffer = io.BytesIO()
    latent_preview(latents).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
