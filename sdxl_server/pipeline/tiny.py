"""A tiny SDXL-shaped pipeline with random weights, for running offline and in tests.

It has every component SDXL has (two CLIP text encoders of different widths, a UNet with SDXL's
``text_time`` conditioning, a 4-level VAE, Euler scheduler) at a size that runs 25 steps at 64x64
in well under a second on a CPU. It is built once with a fixed seed, saved with
``save_pretrained`` and then loaded through ``from_pretrained`` like any real model, so the server
exercises the same code path. Its images are noise: only the plumbing is real.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..config import cache_home

log = logging.getLogger(__name__)

# Bump when the architecture below changes, so old caches are not reused.
TINY_VERSION = 1


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's (and GPT-2's) reversible byte -> printable character table.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def write_byte_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer whose vocabulary is the 256 bytes (and their word-final forms): no download."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _unet(cross_attention_dim: int, time_ids: int):
    """SDXL's UNet in miniature: ``cross_attention_dim`` wide text conditioning (both encoders for
    the base, the second alone for the refiner), ``time_ids`` size-and-crop (and, for the refiner,
    aesthetic score) values embedded beside the pooled text embedding (32 wide).
    Three levels like SDXL; attention only at the lowest one keeps 1024x1024 affordable on a CPU."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=1, attention_head_dim=(2, 4, 8), norm_num_groups=8,
        cross_attention_dim=cross_attention_dim, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=time_ids * 8 + 32,
    )


TEXT_WIDTHS = (32, 48)  # the tiny text encoders' widths (SDXL's: 768 and 1280)


def write_tiny_embedding(path: Path, vectors: int = 2, seed: int = 0, widths: tuple[int, int] = TEXT_WIDTHS) -> Path:
    """A textual-inversion embedding for the tiny model in SDXL's layout (``clip_l`` and ``clip_g``,
    ``[vectors, width]``), random from ``seed`` at a real embedding's scale: tests and benches
    need one that changes the image, and no real one fits these widths."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    parts = zip(("clip_l", "clip_g"), widths)
    tensors = {part: torch.randn(vectors, width, generator=generator) * 0.5 for part, width in parts}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def build_tiny_pipeline(seed: int = 0):
    """Build the tiny pipeline in memory (random weights from ``seed``)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_byte_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer(f"{tmp}/vocab.json", f"{tmp}/merges.txt", model_max_length=77)
    vocab_size = len(tokenizer)
    text_common = dict(
        vocab_size=vocab_size, max_position_embeddings=77, num_attention_heads=2, projection_dim=32,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    # SDXL: CLIP ViT-L (768 wide, quick_gelu) and OpenCLIP bigG (1280 wide, 32 layers, gelu, projected).
    # Different widths let the single-file loader tell the two apart; 10 layers in the second let
    # diffusers recognise a checkpoint of this model as SDXL base when no config folder is given.
    text_encoder = CLIPTextModel(
        CLIPTextConfig(hidden_size=TEXT_WIDTHS[0], intermediate_size=64, num_hidden_layers=2, hidden_act="quick_gelu", **text_common)
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(hidden_size=TEXT_WIDTHS[1], intermediate_size=96, num_hidden_layers=10, hidden_act="gelu", **text_common)
    )
    unet = _unet(cross_attention_dim=32 + 48, time_ids=6)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
        mid_block_add_attention=False,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    )


def ensure_tiny_model(cache_root: Path | None = None) -> Path:
    """Return the folder of the saved tiny pipeline, building it there first if needed."""
    return _ensure_saved(cache_root, f"tiny-sdxl-v{TINY_VERSION}", build_tiny_pipeline)


def _ensure_saved(cache_root: Path | None, name: str, build, marker: str = "model_index.json") -> Path:
    """``build()`` saved under ``cache_root/name``, unless it is there already (its ``marker`` file is).

    The folder appears atomically (built aside, then renamed), so a crash never leaves a half
    model that a later start would try to load.
    """
    root = cache_root or cache_home()
    folder = root / name
    if (folder / marker).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    log.info("building the tiny random-weights %s in %s", name, folder)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
    try:
        build().save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / marker).is_file():  # another process did not win the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def build_tiny_refiner(seed: int = 1):
    """The tiny SDXL refiner: a UNet conditioned on ``text_encoder_2`` alone (48 wide) with the
    aesthetic score among its time ids (5 of them, not base's 6), and the base's text encoder 2,
    tokenizer, VAE and scheduler shapes (the server gives it the base's own at load time)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    base = build_tiny_pipeline()
    torch.manual_seed(seed)
    unet = _unet(cross_attention_dim=48, time_ids=5)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
        tokenizer_2=base.tokenizer_2, unet=unet, scheduler=base.scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )


def ensure_tiny_refiner(cache_root: Path | None = None) -> Path:
    """The folder of the saved tiny refiner, built there first if needed."""
    return _ensure_saved(cache_root, f"tiny-sdxl-refiner-v{TINY_VERSION}", build_tiny_refiner)


def build_tiny_controlnet(seed: int = 2):
    """A tiny SDXL ControlNet for the tiny base: its UNet's encoder half (copied from the base's
    shapes, random weights from ``seed``) with an 8x-downsampling control-image embedding. Its
    output convolutions, zero in a fresh ControlNet, are random too, so a unit visibly changes the image."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(
        _unet(cross_attention_dim=32 + 48, time_ids=6), conditioning_embedding_out_channels=(8, 8, 16, 16),
    )
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0, 0.3)
    return controlnet


def ensure_tiny_controlnet(folder: Path, seed: int = 2) -> Path:
    """The tiny SDXL ControlNet saved as a diffusers folder at ``folder`` (e.g. in CONTROLNET_DIR), built first if needed."""
    return _ensure_saved(folder.parent, folder.name, lambda: build_tiny_controlnet(seed), marker="config.json")


def build_tiny_union_controlnet(seed: int = 3):
    """A tiny SDXL ControlNet-Union (eight control types, as xinsir's promax): the tiny ControlNet's
    shapes with the Union's control-type embedding and transformer at the tiny width; its output
    convolutions and per-type projection random, so each control type makes its own image."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    torch.manual_seed(seed)
    plain = ControlNetModel.from_unet(_unet(cross_attention_dim=32 + 48, time_ids=6), conditioning_embedding_out_channels=(8, 8, 16, 16))
    config = {key: value for key, value in plain.config.items() if not key.startswith("_") and key != "mid_block_type"}
    union = ControlNetUnionModel.from_config(
        {**config, "num_trans_channel": 8, "num_proj_channel": 8, "num_trans_head": 2, "num_control_type": 8}
    )
    with torch.no_grad():
        for conv in [*union.controlnet_down_blocks, union.controlnet_mid_block]:
            conv.weight.normal_(0, 0.3)
        union.spatial_ch_projs.weight.normal_(0, 0.5)
    return union


def ensure_tiny_union_controlnet(folder: Path, seed: int = 3) -> Path:
    """The tiny SDXL ControlNet-Union saved as a diffusers folder at ``folder``, built first if needed."""
    return _ensure_saved(folder.parent, folder.name, lambda: build_tiny_union_controlnet(seed), marker="config.json")


def write_tiny_ip_adapter(folder: Path, name: str = "tiny-ip-adapter", seed: int = 4) -> Path:
    """A tiny SDXL IP-Adapter for the tiny base in ``folder`` (an IP_ADAPTER_DIR): ``{name}.safetensors``
    in h94's layout (``image_proj.``: the image embedding projected to four 80-wide tokens;
    ``ip_adapter.{1,3,...}.to_k_ip/to_v_ip``: a key and value projection per cross-attention layer,
    in the UNet's order) and a tiny CLIP image encoder in ``image_encoder/``. Random from ``seed``,
    large enough that it visibly changes the image."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
        projection_dim=16,
    ))
    encoder.save_pretrained(folder / "image_encoder")
    unet = _unet(cross_attention_dim=32 + 48, time_ids=6)
    width = unet.config.cross_attention_dim
    tensors = {"image_proj.proj.weight": torch.randn(width * 4, 16) * 0.5, "image_proj.proj.bias": torch.zeros(width * 4),
               "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    cross = [key for key in unet.attn_processors if not key.endswith("attn1.processor")]
    for index, key in enumerate(cross):
        attention = unet.get_submodule(key.removesuffix(".processor"))
        for kind, linear in (("to_k_ip", attention.to_k), ("to_v_ip", attention.to_v)):
            tensors[f"ip_adapter.{2 * index + 1}.{kind}.weight"] = torch.randn_like(linear.weight) * 0.5
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(folder / f"{name}.safetensors"))
    return folder / f"{name}.safetensors"

TINY_UPSCALER = "tiny-compact-2x"  # the offline demo's upscaler (MODEL_ID=tiny), beside UPSCALERS_DIR's


def write_tiny_upscaler(path: Path, scale: int = 2, features: int = 8, convs: int = 1, seed: int = 0) -> Path:
    """A random-weights Real-ESRGAN Compact (SRVGG) upscaler saved as ``.safetensors`` (or ``.pth``):
    a few 3x3 convolutions and a pixel shuffle, whose state dict spandrel recognises like any real
    one. Its reach is ``convs + 2`` pixels, so tiles with that much overlap match the whole image."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, features, 3, 1, 1), torch.nn.PReLU(features)]
    for _ in range(convs):
        layers += [torch.nn.Conv2d(features, features, 3, 1, 1), torch.nn.PReLU(features)]
    layers.append(torch.nn.Conv2d(features, 3 * scale * scale, 3, 1, 1))
    state = {f"body.{key}": value.contiguous() for key, value in torch.nn.Sequential(*layers).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes sharing a cache never share it
    if path.suffix == ".pth":
        torch.save(state, staging)
    else:
        save_file(state, str(staging))
    staging.replace(path)  # atomic: a reader never sees half a file
    return path


def ensure_tiny_upscaler(cache_root: Path | None = None) -> Path:
    """The tiny upscaler's file, written first if needed."""
    path = (cache_root or cache_home()) / f"{TINY_UPSCALER}-v{TINY_VERSION}.safetensors"
    return path if path.is_file() else write_tiny_upscaler(path)
