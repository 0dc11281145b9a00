"""Compiling the UNet and VAE decoder (``COMPILE``), and the layout toggles that go with it
(``CHANNELS_LAST``, ``FUSE_QKV``).

``torch.compile`` runs at load, with dynamic shapes and no duck sizing, so that one compiled graph
serves every image size and batch (a square warm-up does not specialise width to height); the
engine then warms it up at the default size before ``/health`` says ``ok``. Compiled code is kept
in a persistent cache (``COMPILE_CACHE``) so a restart reads it back instead of compiling again:
torch fixes ``TORCHINDUCTOR_CACHE_DIR`` the first time it touches the cache, so it is set here,
before the first compile. A compile that fails leaves the pipeline eager (and says so on
``/health``) rather than the server down. Never imports aiohttp.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Settings, cache_home
from ..errors import short_message

log = logging.getLogger(__name__)



def compile_cache_dir(settings: Settings) -> Path:
    """``COMPILE_CACHE``, else ``TORCHINDUCTOR_CACHE_DIR`` if set, else ``inductor`` in the cache home."""
    if settings.compile_cache is not None:
        return settings.compile_cache.expanduser()
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    return cache_home() / "inductor"


def apply_layout_options(pipe: Any, settings: Settings, attention: str) -> dict[str, Any]:
    """``CHANNELS_LAST`` and ``FUSE_QKV``; returns what was applied."""
    if settings.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    fused = False
    if settings.fuse_qkv:
        if attention == "sdpa":
            pipe.fuse_qkv_projections()
            fused = True
        else:  # the fused processor is an SDPA one: it would silently replace xFormers or slicing
            log.warning("FUSE_QKV needs ATTENTION=sdpa (it is %s); projections left unfused", attention)
    return {"channels_last": settings.channels_last, "fuse_qkv": fused}


class Compilation:
    """What ``COMPILE`` did: its mode, state (``off``, ``compiling``, ``ready``, ``failed``), the
    seconds the compile and warm-up took, and the cache it used. Shown on ``/health``."""

    backend: Any = "inductor"  # tests trace with dynamo alone ("eager"), or a backend that fails

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.compile
        self.state = "off"
        self.seconds: float | None = None
        self.cache_dir = compile_cache_dir(settings) if self.mode != "none" else None
        self.error: str | None = None
        self._started = 0.0
        self._modules: list[torch.nn.Module] = []

    @property
    def wanted(self) -> bool:
        return self.mode != "none"

    def start(self, pipe: Any, offload: str) -> bool:
        """Compile the UNet and the VAE decoder (lazily: the warm-up triggers the real work);
        False when compiling is off or cannot apply."""
        if not self.wanted:
            return False
        if offload != "none":  # offload hooks move weights inside forward: nothing to compile around
            self.state, self.error = "off", f"not compiled: CPU_OFFLOAD={offload} moves weights during forward"
            log.warning("COMPILE=%s ignored: %s", self.mode, self.error)
            return False
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.cache_dir)  # before torch first reads it
        # One graph for every size: without duck sizing a square warm-up keeps width and height apart.
        torch.fx.experimental._config.use_duck_shape = False
        self._started = time.perf_counter()
        self.state = "compiling"
        log.info("compiling the UNet and VAE decoder (COMPILE=%s, cache %s)", self.mode, self.cache_dir)
        self._modules = [pipe.unet, pipe.vae.decoder]
        for module in self._modules:
            # Frozen first, as inference wants them: loading a LoRA (PEFT) freezes the base
            # parameters, and a flag that changed under the graph's guards would compile it again.
            module.requires_grad_(False)
            if self.backend == "inductor":
                module.compile(mode=self.mode, dynamic=True)
            else:
                module.compile(backend=self.backend, dynamic=True)
        return True

    def finished(self) -> None:
        self.seconds = time.perf_counter() - self._started
        self.state = "ready"
        log.info("compiled and warmed up in %.1fs", self.seconds)

    def failed(self, exc: BaseException) -> None:
        """Back to eager after a failed compile or warm-up."""
        self.seconds = time.perf_counter() - self._started
        self.state, self.error = "failed", f"compile failed, running eager: {short_message(exc)}"
        log.error("%s", self.error)
        for module in self._modules:
            module._compiled_call_impl = None  # what Module.compile() set: the eager forward again
        torch._dynamo.reset()

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "state": self.state,
            "seconds": None if self.seconds is None else round(self.seconds, 2),
            "dynamic": self.wanted,
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
            "error": self.error,
        }
