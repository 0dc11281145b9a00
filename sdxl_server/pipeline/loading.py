"""Loading a pipeline from its source, and the memory options applied to it."""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from ..config import DEFAULT_HUB_MODEL, DEFAULT_HUB_REFINER, Settings
from ..errors import short_message
from .memory import MemoryPlan
from .runtime import Runtime, xformers_importable
from .sources import ModelSource
from .text_encoders import park_text_encoders
from .tiny import ensure_tiny_model, ensure_tiny_refiner
from .weights import group_offload, store_in_fp8

log = logging.getLogger(__name__)

# Tiles of 512 px (64 latents) so tiling takes effect at SDXL's native 1024x1024; diffusers'
# default tile is the VAE's sample_size (1024), which would never tile a 1024 image.
VAE_TILE_PX = 512


def load_vae(location: str, config_source: str, dtype: torch.dtype):
    """A VAE from a single file or a diffusers folder (or Hub id)."""
    from diffusers import AutoencoderKL

    path = Path(location).expanduser()
    if path.suffix == ".safetensors" or path.is_file():
        return AutoencoderKL.from_single_file(str(path), config=config_source, subfolder="vae", dtype=dtype)
    return AutoencoderKL.from_pretrained(str(path) if path.exists() else location, dtype=dtype)


def _location(source: ModelSource, tiny: Callable[[], Path]) -> str:
    """Where ``from_pretrained`` finds ``source`` (the tiny model built first if needed)."""
    if source.kind == "tiny":
        return str(tiny())
    if source.kind == "folder" and not Path(source.location).is_dir():
        raise FileNotFoundError(f"no such folder: {source.location}")
    return source.location


def load_pipeline(settings: Settings, runtime: Runtime, source: ModelSource):
    """The SDXL pipeline ``source`` names, in ``runtime``'s precision (not yet on its device)."""
    from diffusers import StableDiffusionXLPipeline

    dtype = runtime.torch_dtype
    kwargs: dict[str, Any] = {"dtype": dtype}
    if source.kind == "single_file":
        config = settings.model_config or DEFAULT_HUB_MODEL
        if source.vae:
            kwargs["vae"] = load_vae(source.vae, config, dtype)
        return StableDiffusionXLPipeline.from_single_file(source.location, config=config, **kwargs)
    location = _location(source, lambda: ensure_tiny_model(settings.tiny_cache))
    if source.vae:
        kwargs["vae"] = load_vae(source.vae, location, dtype)
    if source.kind == "hub" and runtime.dtype == "float16":
        try:  # half the download where the repository publishes fp16 weights
            return StableDiffusionXLPipeline.from_pretrained(location, variant="fp16", **kwargs)
        except ValueError as exc:
            if "variant" not in str(exc):
                raise
    return StableDiffusionXLPipeline.from_pretrained(location, **kwargs)


def apply_memory_options(pipe: Any, settings: Settings, runtime: Runtime, plan: MemoryPlan) -> dict[str, Any]:
    """Attention, then ``plan``'s VAE tiling, float8 storage, offload or device placement and text
    encoders, and VAE slicing; returns what was chosen."""
    attention = settings.attention
    if attention == "auto":
        attention = "xformers" if runtime.on_cuda and xformers_importable() else "sdpa"
    if attention == "xformers":
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # noqa: BLE001 - auto mode falls back to SDPA, which is as fast
            if settings.attention == "xformers":
                raise
            log.warning("xFormers could not be enabled (%s); using PyTorch SDPA", short_message(exc))
            attention = "sdpa"
    elif attention == "slicing":
        # Only on request: stacked on SDPA/xFormers it saves little memory and costs speed.
        pipe.enable_attention_slicing()

    tiling = plan.vae_tiling
    if tiling:
        pipe.vae.enable_tiling()
        pipe.vae.tile_sample_min_size = VAE_TILE_PX
        pipe.vae.tile_latent_min_size = VAE_TILE_PX // pipe.vae_scale_factor
    if settings.vae_slicing:
        pipe.vae.enable_slicing()

    fp8 = store_in_fp8(pipe, plan.fp8, runtime.torch_dtype)  # before placing: the hooks move with the weights
    _place(pipe, plan.cpu_offload, runtime)
    if plan.cpu_offload == "none" and plan.text_encoder_offload:
        park_text_encoders(pipe)
    return {
        "fp8_weights": fp8,
        "attention": attention,
        "vae_tiling": tiling,
        "vae_tile_px": VAE_TILE_PX if tiling else None,
        "vae_slicing": settings.vae_slicing,
        "cpu_offload": plan.cpu_offload,
        "text_encoder_offload": plan.text_encoder_offload,
        "memory_profile": plan.describe(),
        "torch_threads": torch.get_num_threads(),
    }


def load_refiner(settings: Settings, runtime: Runtime, source: ModelSource, base: Any):
    """The SDXL refiner ``source`` names, sharing ``base``'s ``text_encoder_2`` and VAE (neither
    is loaded again), in ``runtime``'s precision."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    shared = {"text_encoder_2": base.text_encoder_2, "tokenizer_2": base.tokenizer_2, "vae": base.vae,
              "text_encoder": None, "tokenizer": None, "dtype": runtime.torch_dtype}
    if source.kind == "single_file":
        config = settings.refiner_config or DEFAULT_HUB_REFINER
        return StableDiffusionXLImg2ImgPipeline.from_single_file(source.location, config=config, **shared)
    location = _location(source, lambda: ensure_tiny_refiner(settings.tiny_cache))
    return StableDiffusionXLImg2ImgPipeline.from_pretrained(location, **shared)


def place_refiner(refiner: Any, settings: Settings, runtime: Runtime, options: dict[str, Any], placement: str) -> None:
    """The base's memory options on the refiner: its attention, and its UNet where ``placement``
    says (:func:`.memory.refiner_placement`). Its text encoder 2 and VAE are the base's, already
    where the base's memory plan put them (the text encoder may be parked on the CPU)."""
    if options.get("attention") == "xformers":
        refiner.enable_xformers_memory_efficient_attention()
    elif options.get("attention") == "slicing":
        refiner.enable_attention_slicing()
    if placement == "offloaded":
        _place(refiner, options.get("cpu_offload", settings.cpu_offload), runtime)
        return
    refiner.unet.to("cpu" if placement == "swapped" else runtime.device)
    refiner.set_progress_bar_config(disable=True)


def _place(pipe: Any, cpu_offload: str, runtime: Runtime) -> None:
    """On the device, or offloaded to the CPU between uses (``cpu_offload``: the memory plan's
    CPU_OFFLOAD); no progress bars."""
    if cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=runtime.device)
    elif cpu_offload == "group":
        group_offload(pipe, runtime.device)
    elif cpu_offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=runtime.device)
    else:
        pipe.to(runtime.device)
    pipe.set_progress_bar_config(disable=True)  # the server reports progress itself
