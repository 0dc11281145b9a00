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


class LatentPreviews:
    """Previews taken without stalling the denoising loop, for one job on the worker thread.

    :meth:`take` starts a copy of the latents; :meth:`ready` hands back the preview of the latest
    copy once it has arrived. On CUDA the copy is ``non_blocking`` into pinned host memory with an
    event recorded behind it, so the host never waits for the device: a preview is encoded when its
    event says the copy is done (usually at the next step). On the CPU the copy is the preview at once.
    Nothing here reads a tensor's values unless :meth:`take` was called.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None  # pending copy into _buffer (CUDA only)
        self._latest: torch.Tensor | None = None  # a finished copy not yet encoded (CPU)

    @property
    def pending(self) -> bool:
        return self._copied is not None or self._latest is not None

    def take(self, latents: torch.Tensor) -> bool:
        """Start copying the first latent of ``latents``; False (and nothing done) while the
        previous copy is still on its way."""
        if self._copied is not None:
            return False
        latent = latents[0].detach()
        if latent.device.type != "cuda":
            self._latest = latent.to("cpu", copy=True)
            return True
        if self._buffer is None or self._buffer.shape != latent.shape or self._buffer.dtype != latent.dtype:
            self._buffer = torch.empty(latent.shape, dtype=latent.dtype, pin_memory=True)
        self._buffer.copy_(latent, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return True

    def ready(self) -> str | None:
        """The preview of the latest copy as a JPEG data URL once the copy has arrived, else None."""
        if self._copied is not None:
            if not self._copied.query():  # never waits
                return None
            self._copied, self._latest = None, self._buffer
        if self._latest is None:
            return None
        latest, self._latest = self._latest, None
        return preview_data_url(latest.unsqueeze(0))
