"""Hires fix's latent upscale between its passes: the latents interpolated, as A1111's
``Latent (...)`` upscalers do, to a size that covers the target, then cropped to it at the centre
(the pixel upscalers are :mod:`.upscalers`', their result cropped by :func:`center_crop`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..params import LATENT_UPSCALERS

# A1111's names -> (torch's interpolation mode, antialias), as its shared.latent_upscale_modes.
LATENT_MODES: dict[str, tuple[str, bool]] = dict(zip(LATENT_UPSCALERS, (
    ("bilinear", False), ("bilinear", True), ("bicubic", False), ("bicubic", True), ("nearest", False),
    ("nearest-exact", False),
)))


def is_latent(upscaler: str) -> bool:
    return upscaler in LATENT_MODES


def upscale_latents(latents: torch.Tensor, upscaler: str, cover: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``latents`` interpolated to ``cover`` (pixels; the latents are an eighth of it) and cropped to ``size``."""
    mode, antialias = LATENT_MODES[upscaler]
    scaled = F.interpolate(latents.float(), size=(cover[1] // 8, cover[0] // 8), mode=mode, antialias=antialias)
    return _crop(scaled, size[0] // 8, size[1] // 8).to(latents.dtype)


def _crop(tensor: torch.Tensor, width: int, height: int) -> torch.Tensor:
    top, left = (tensor.shape[-2] - height) // 2, (tensor.shape[-1] - width) // 2
    return tensor[..., top:top + height, left:left + width]


def center_crop(image: Any, size: tuple[int, int]) -> Any:
    if image.size == size:
        return image
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))
