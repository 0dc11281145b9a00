"""Few steps and smaller weights: the ``steps`` section (images per second for 1, 2, 4, 8 and 25
steps, served) and what the ``memory`` section adds about float8 storage: the resident size of the
full-size random SDXL UNet and text encoder 2 with and without it (``--memory-fullsize``, several
GB of RAM), what each memory profile keeps on the GPU from those figures, and how much float8
storage changes the tiny model's image for one seed."""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np
import torch

from ...pipeline.memory import PROFILES
from ...pipeline.weights import STORAGE_DTYPE, resident_bytes, store_in_fp8
from .client import Client
from .stats import percentile, rss_bytes, summarize

STEP_COUNTS = (1, 2, 4, 8, 25)
FEW = 8  # up to this many steps: a few-step model's settings (Euler, trailing timesteps, no guidance)
VAE_BYTES_FP16 = 83_653_863 * 2  # the VAE is never stored in float8
TEXT_ENCODER_1_BYTES_FP16 = 123_060_480 * 2


def steps_body(client: Client, steps: int, seed: int) -> dict[str, Any]:
    """The request for ``steps``: few-step settings up to FEW, the bench's own guidance above."""
    body = {k: v for k, v in client.opts.body(seed).items() if k != "scheduler"}
    few = steps <= FEW
    return {**body, "steps": steps, "guidance_scale": 1.0 if few else client.opts.guidance_scale,
            "sampler": "euler", "schedule": "sgm_uniform" if few else "automatic"}


async def section_steps(client: Client) -> dict[str, Any]:
    """Images per second, served, for each step count (a warm-up first, then ``runs`` each)."""
    results = {}
    for steps in STEP_COUNTS:
        await client.generate(steps_body(client, steps, client.fresh_seed()))  # warm-up
        seconds = []
        for _ in range(client.opts.runs):
            taken, _ = await client.generate(steps_body(client, steps, client.fresh_seed()))
            seconds.append(taken)
        body = steps_body(client, steps, 0)
        median = percentile(seconds, 50)
        results[str(steps)] = {"guidance_scale": body["guidance_scale"], "schedule": body["schedule"],
                               "unet_passes": steps * (2 if body["guidance_scale"] > 1 else 1),
                               "served_s": summarize(seconds), "images_per_s": round(1 / median, 3)}
    opts = client.opts
    return {"size": {"width": opts.width, "height": opts.height}, "runs": opts.runs, "by_steps": results,
            "speedup_4_vs_25": round(results["4"]["images_per_s"] / results["25"]["images_per_s"], 2)}


def _measure_fp8(build, compute_dtype: torch.dtype) -> dict[str, Any]:
    """Resident bytes (parameters and buffers) and process RSS of a module before and after float8 storage."""
    gc.collect()
    rss_start = rss_bytes() or 0
    module = build()
    before, rss_before = resident_bytes(module), (rss_bytes() or 0) - rss_start
    started = time.perf_counter()
    if hasattr(module, "enable_layerwise_casting"):
        module.enable_layerwise_casting(storage_dtype=STORAGE_DTYPE, compute_dtype=compute_dtype)
    else:
        from diffusers.hooks import apply_layerwise_casting

        apply_layerwise_casting(module, storage_dtype=STORAGE_DTYPE, compute_dtype=compute_dtype,
                                skip_modules_pattern=("embeddings", "layer_norm", "text_projection"))
    cast_s = time.perf_counter() - started
    gc.collect()
    after, rss_after = resident_bytes(module), (rss_bytes() or 0) - rss_start
    del module
    gc.collect()
    return {"bytes": before, "fp8_bytes": after, "ratio": round(after / before, 3), "rss_mb": round(rss_before / 2**20),
            "fp8_rss_mb": round(rss_after / 2**20), "cast_s": round(cast_s, 2)}


def fullsize_weights(dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """The full-size random UNet and text encoder 2 (one at a time: at most about 5 GB of RAM),
    in ``dtype`` and stored in float8."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ...pipeline.fullsize import CLIP_VOCAB_SIZE, TEXT_ENCODER_2_CONFIG, UNET_CONFIG, _default_dtype

    def unet():
        with torch.device("cpu"), _default_dtype(dtype):
            return UNet2DConditionModel(**UNET_CONFIG).eval().requires_grad_(False)

    def text_encoder_2():
        with torch.device("cpu"), _default_dtype(dtype):
            config = CLIPTextConfig(**TEXT_ENCODER_2_CONFIG, vocab_size=CLIP_VOCAB_SIZE)
            return CLIPTextModelWithProjection(config).eval().requires_grad_(False)

    measured = {"dtype": str(dtype).removeprefix("torch."), "unet": _measure_fp8(unet, dtype),
                "text_encoder_2": _measure_fp8(text_encoder_2, dtype)}
    measured["profiles"] = profile_weights(measured)
    return measured


def profile_weights(measured: dict[str, Any]) -> dict[str, float]:
    """GiB of weights each memory profile keeps on the GPU between jobs (from the measured sizes;
    text encoder 1 scaled as text encoder 2 is; ``low`` offloads, so little stays)."""
    unet, te2 = measured["unet"], measured["text_encoder_2"]
    te1_fp8 = TEXT_ENCODER_1_BYTES_FP16 * te2["ratio"]
    resident = {}
    for name, chosen in PROFILES.items():
        total = unet["fp8_bytes"] if chosen["fp8"] != "off" else unet["bytes"]
        if not chosen["text_encoder_offload"]:
            total += te2["fp8_bytes"] + te1_fp8 if chosen["fp8"] == "all" else te2["bytes"] + TEXT_ENCODER_1_BYTES_FP16
        total += VAE_BYTES_FP16
        resident[name] = 0.0 if chosen["cpu_offload"] != "none" else round(total / 2**30, 2)
    return resident


def tiny_fp8_difference(model_dir: str, steps: int = 4, seed: int = 21) -> dict[str, Any]:
    """The tiny model's image for one seed in float32 and with float8 weights (UNet and text
    encoders): the mean and largest difference per channel (0-255) and the PSNR."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def image() -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(seed)
        made = pipe("a lighthouse", negative_prompt="fog", width=64, height=64, num_inference_steps=steps,
                    generator=generator).images[0]
        return np.asarray(made, dtype=np.float64)

    plain = image()
    store_in_fp8(pipe, "all", torch.float32)
    stored = image()
    error = np.abs(plain - stored)
    mse = float((error**2).mean())
    return {"steps": steps, "seed": seed, "mean_abs_diff": round(float(error.mean()), 3), "max_abs_diff": int(error.max()),
            "psnr_db": None if mse == 0 else round(10 * np.log10(255**2 / mse), 2)}
