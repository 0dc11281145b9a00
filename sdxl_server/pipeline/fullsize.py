"""A full-size SDXL base 1.0 architecture with random weights, for benchmarks without a download.

Every component has SDXL base 1.0's published hyper-parameters (the ``config.json`` files of
``stabilityai/stable-diffusion-xl-base-1.0``), so the compute and memory per step are those of
the real model; only the weights are random, so the images are noise:

==================  =====================================================  ===============
component           architecture                                           parameters
==================  =====================================================  ===============
``unet``            UNet2DConditionModel, channels 320/640/1280,            2,567,463,684
                    transformer layers 1/2/10, cross-attention 2048
``text_encoder``    CLIP ViT-L/14 text model (768 wide, 12 layers)            123,060,480
``text_encoder_2``  OpenCLIP ViT-bigG/14 text model with projection           694,659,840
                    (1280 wide, 32 layers)
``vae``             AutoencoderKL, 4 levels 128/256/512/512                    83,653,863
==================  =====================================================  ===============

The tokenizers are the byte-level CLIP tokenizer of :mod:`sdxl_server.pipeline.tiny` (no download); the
text encoders keep CLIP's real vocabulary size (49408) so their embedding tables, parameter
counts and memory are the real ones.

:func:`build_fullsize_refiner` does the same for SDXL refiner 1.0 (its UNet: 2,259,526,660
parameters; it shares text encoder 2 and the VAE with the base). :func:`build_fullsize_pipeline` builds it on ``meta`` (no memory: for parameter counts), on the
CPU, or straight on a GPU; :func:`save_fullsize_model` saves it with ``save_pretrained`` so the
server loads it as a local folder (``MODEL_ID=/path/to/folder``), the path a real model takes::

    python -m sdxl_server.pipeline.fullsize                       # parameter counts (on meta, no memory)
    python -m sdxl_server.pipeline.fullsize --save /tmp/sdxl-random --device cuda   # ~7 GB, seconds on a GPU
    python -m sdxl_server.pipeline.fullsize --save-refiner /tmp/sdxl-refiner-random --device cuda  # the refiner too
    MODEL_ID=/tmp/sdxl-random python -m sdxl_server      # serve it (or the bench: python -m sdxl_server.tools.bench)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .tiny import write_byte_tokenizer

FULLSIZE_NAME = "fullsize-random"

# Bump when anything below changes, so a saved folder is not reused for another architecture.
FULLSIZE_VERSION = 1

CLIP_VOCAB_SIZE = 49408

# stable-diffusion-xl-base-1.0/unet/config.json (defaults left out).
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),  # diffusers' name for the number of heads in SDXL's config
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 * 256 (size/crop/target ids) + 1280 (pooled text)
}

# stable-diffusion-xl-base-1.0/text_encoder/config.json: CLIP ViT-L/14's text tower.
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

# stable-diffusion-xl-base-1.0/text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower.
TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

# stable-diffusion-xl-base-1.0/vae/config.json.
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

# stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

# stable-diffusion-xl-refiner-1.0/unet/config.json: 4 levels, 4 transformer layers where there is
# attention, conditioned on text encoder 2 alone, with the aesthetic score among its 5 time ids.
REFINER_UNET_CONFIG: dict[str, Any] = {
    **UNET_CONFIG,
    "block_out_channels": (384, 768, 1536, 1536),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": 4,
    "attention_head_dim": (6, 12, 24, 24),
    "cross_attention_dim": 1280,
    "projection_class_embeddings_input_dim": 2560,  # 5 * 256 (size/crop/aesthetic ids) + 1280 (pooled text)
}

# The refiner's UNet (4.52 GB in float16); it shares text encoder 2 and the VAE with the base.
EXPECTED_REFINER_UNET_PARAMETERS = 2_259_526_660

# Published sizes (parameters) of SDXL base 1.0's components, for checks.
EXPECTED_PARAMETERS: dict[str, int] = {
    "unet": 2_567_463_684,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    "vae": 83_653_863,
}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _tame(*models: torch.nn.Module) -> None:
    """Keep a random-weights model's activations inside float16's range.

    Default initialisation lets the residual streams of a 2.6 B-parameter UNet and of the VAE
    decoder grow with depth; in float16 they can overflow to inf/NaN, and a non-finite decode
    would make the server decode again in float32 (``vae_upcast``), which is not what a trained
    model costs. Scaling each residual branch's last layer down (as trained diffusion models
    end up, and as "zero-init" schemes start) keeps them bounded. The weights stay dense and
    random, so every kernel does the same work as with trained weights.
    """
    with torch.no_grad():
        for name, module in (item for model in models for item in model.named_modules()):
            last = name.endswith(("conv2", "proj_out", "to_out.0", "ff.net.2"))
            if last and isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.weight.device.type != "meta":
                module.weight.mul_(0.1)


def _components(device: str | torch.device, dtype: torch.dtype, seed: int, unet_config: dict[str, Any],
                text_encoder: bool) -> dict[str, Any]:
    """An SDXL pipeline's components with random weights, made directly in ``dtype`` on ``device``
    (no float32 copy, no transfer): the base's, or (``text_encoder=False``) a refiner's."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        write_byte_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer(f"{tmp}/vocab.json", f"{tmp}/merges.txt", model_max_length=77)
    byte_vocab = len(tokenizer)
    # CLIP's real vocabulary size (the byte tokenizer's ids are all below it) and the byte
    # tokenizer's own start/end ids, which the text model uses to find the pooled token.
    ids = dict(
        vocab_size=CLIP_VOCAB_SIZE, bos_token_id=byte_vocab - 2, eos_token_id=byte_vocab - 1,
        pad_token_id=byte_vocab - 1,
    )
    if device.type != "meta":
        torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        models = {
            "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG, **ids)) if text_encoder else None,
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2_CONFIG, **ids)),
            "unet": UNet2DConditionModel(**unet_config),
            "vae": AutoencoderKL(**VAE_CONFIG),
        }
    _tame(models["unet"], models["vae"])
    for model in models.values():
        if model is not None:
            model.eval().requires_grad_(False)
    return {**models, "tokenizer": tokenizer if text_encoder else None, "tokenizer_2": tokenizer,
            "scheduler": EulerDiscreteScheduler(**SCHEDULER_CONFIG)}


def build_fullsize_pipeline(device: str | torch.device = "meta", dtype: torch.dtype = torch.float16, seed: int = 0):
    """Build SDXL base 1.0's architecture with random weights (seeded) on ``device``.

    ``device="meta"`` allocates nothing (for parameter counts and shapes; it cannot run).
    Otherwise the weights are created directly on ``device`` in ``dtype``: about 7 GB in
    float16, 14 GB in float32; on a GPU this takes seconds.
    """
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**_components(device, dtype, seed, UNET_CONFIG, text_encoder=True))


def build_fullsize_refiner(device: str | torch.device = "meta", dtype: torch.dtype = torch.float16, seed: int = 1, base=None):
    """SDXL refiner 1.0's architecture with random weights: its UNet, with ``base``'s text encoder
    2, tokenizer and VAE as the server pairs them (without ``base``, a text encoder 2 and VAE of
    its own: what a saved refiner folder holds; the base's UNet and first encoder are not built)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    if base is None:
        parts = _components(device, dtype, seed, REFINER_UNET_CONFIG, text_encoder=False)
    else:
        if torch.device(device).type != "meta":
            torch.manual_seed(seed)
        with torch.device(device), _default_dtype(dtype):
            unet = UNet2DConditionModel(**REFINER_UNET_CONFIG)
        _tame(unet)
        unet.eval().requires_grad_(False)
        parts = {"text_encoder": None, "tokenizer": None, "text_encoder_2": base.text_encoder_2,
                 "tokenizer_2": base.tokenizer_2, "vae": base.vae, "unet": unet, "scheduler": base.scheduler}
    return StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)


def parameter_counts(pipe) -> dict[str, int]:
    """Parameters per component (works on ``meta``)."""
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "text_encoder", "text_encoder_2", "vae")
    }


def save_fullsize_model(
    folder: str | Path, device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0, pipe=None
) -> Path:
    """Save the full-size random model as a diffusers folder the server loads with ``MODEL_ID=folder``.

    Reuses a folder already saved by the same version, dtype and seed. Builds on ``device``
    (a GPU builds in seconds) unless ``pipe`` is given; the folder appears atomically. About
    7 GB in float16.
    """
    return _save_once(folder, {"name": FULLSIZE_NAME, "version": FULLSIZE_VERSION, "dtype": str(dtype), "seed": seed},
                      lambda: pipe or build_fullsize_pipeline(device, dtype, seed))


def save_fullsize_refiner(folder: str | Path, device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 1) -> Path:
    """Save the full-size random refiner as a folder the server loads with ``REFINER_ID=folder``
    (about 6 GB in float16: its UNet, and the text encoder 2 and VAE a folder holds)."""
    return _save_once(folder, {"name": FULLSIZE_NAME + "-refiner", "version": FULLSIZE_VERSION, "dtype": str(dtype), "seed": seed},
                      lambda: build_fullsize_refiner(device, dtype, seed))


def _save_once(folder: str | Path, stamp: dict[str, Any], build) -> Path:
    """``build()`` saved in ``folder`` with ``stamp``, unless a folder with that stamp is there."""
    folder = Path(folder)
    stamp_file = folder / "fullsize.json"
    if (folder / "model_index.json").is_file() and stamp_file.is_file():
        if json.loads(stamp_file.read_text()) == stamp:
            return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fullsize-", dir=folder.parent))
    try:
        build().save_pretrained(staging)
        (staging / "fullsize.json").write_text(json.dumps(stamp))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxl_server.pipeline.fullsize", description=__doc__.splitlines()[0])
    parser.add_argument("--save", type=Path, default=None, metavar="FOLDER", help="save it there (diffusers folder)")
    parser.add_argument("--save-refiner", type=Path, default=None, metavar="FOLDER",
                        help="also save a full-size random SDXL refiner there (serve it with REFINER_ID=FOLDER)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to build it")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = parameter_counts(build_fullsize_pipeline("meta", getattr(torch, args.dtype)))
    for name, count in counts.items():
        print(f"{name:<15} {count:>14,} parameters (SDXL base 1.0: {EXPECTED_PARAMETERS[name]:,})")
    refiner_unet = sum(p.numel() for p in build_fullsize_refiner("meta", getattr(torch, args.dtype)).unet.parameters())
    print(f"{'refiner unet':<15} {refiner_unet:>14,} parameters (SDXL refiner 1.0: {EXPECTED_REFINER_UNET_PARAMETERS:,})")
    if args.save:
        folder = save_fullsize_model(args.save, args.device, getattr(torch, args.dtype), args.seed)
        print(f"saved to {folder}: serve it with MODEL_ID={folder} python -m sdxl_server")
    if args.save_refiner:
        folder = save_fullsize_refiner(args.save_refiner, args.device, getattr(torch, args.dtype), args.seed + 1)
        print(f"saved the refiner to {folder}: add REFINER_ID={folder}")
    return 0 if counts == EXPECTED_PARAMETERS and refiner_unet == EXPECTED_REFINER_UNET_PARAMETERS else 1


if __name__ == "__main__":
    raise SystemExit(main())
