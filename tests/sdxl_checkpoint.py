"""Write diffusers SDXL components as *original* (Stability ldm/sgm layout) single-file checkpoints.

This is the inverse of what ``diffusers``' single-file loader (``from_single_file``) does, so tests can
produce the kind of ``.safetensors`` file people download (``sd_xl_base_1.0.safetensors``,
``sdxl_vae.safetensors``) from the tiny random-weights pipeline, with no network.

It follows ``scripts/convert_diffusers_to_original_sdxl.py`` in the diffusers repository, but derives
the block numbering from each model's config (number of levels, ``layers_per_block``, which levels
have attention) instead of hard-coding SDXL's, so it works for small models too.

Layout written by :func:`save_original_checkpoint`::

    model.diffusion_model.*                 UNet (input_blocks / middle_block / output_blocks ...)
    first_stage_model.*                     VAE (encoder.down.N.block.M ..., decoder.up.N ...)
    conditioner.embedders.0.transformer.*   CLIP ViT-L text model, HF layout (text_model.*)
    conditioner.embedders.1.model.*         OpenCLIP bigG text model (transformer.resblocks.N.attn.in_proj_weight,
                                            positional_embedding, ln_final, text_projection ...)

:func:`save_original_refiner` writes a refiner (UNet, VAE, and OpenCLIP bigG as
``conditioner.embedders.0.model.*``, its only embedder); :func:`save_original_vae` writes the VAE alone, without the ``first_stage_model.`` prefix.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import torch

__all__ = [
    "clip_to_original",
    "open_clip_to_original",
    "original_state_dict",
    "save_original_checkpoint",
    "save_original_refiner",
    "save_original_vae",
    "unet_to_original",
    "vae_to_original",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."

# ----------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}

_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    raise KeyError(rest)


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights under ldm ``UNetModel`` names (without the ``model.diffusion_model.`` prefix)."""
    config = unet.config
    per_level = config.layers_per_block
    if not isinstance(per_level, int):
        raise NotImplementedError("the original layout needs the same layers_per_block at every level")
    if config.mid_block_type != "UNetMidBlock2DCrossAttn":
        # diffusers' loader numbers middle_block as resnet, attention, resnet.
        raise NotImplementedError(f"unsupported mid block {config.mid_block_type!r}")
    if config.class_embed_type is not None or config.addition_embed_type not in (None, "text_time"):
        raise NotImplementedError("only SDXL's text_time additional conditioning is supported")
    up_has_attention = [len(block.attentions) > 0 if hasattr(block, "attentions") else False
                        for block in unet.up_blocks]
    stride = per_level + 1  # resnets (+ attentions) of one level, plus its down/up sampler

    def convert(key: str) -> str:
        for old, new in _UNET_TOP_LEVEL.items():
            if key.startswith(old):
                return new + key[len(old):]
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            return f"input_blocks.{1 + i * stride + j}.0.{_rename_head(rest, _UNET_RESNET)}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            return f"input_blocks.{1 + i * stride + j}.1.{rest}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            i, rest = int(m[1]), m[2]
            return f"input_blocks.{(i + 1) * stride}.0.op.{rest}"
        if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"middle_block.{2 * int(m[1])}.{_rename_head(m[2], _UNET_RESNET)}"
        if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            return f"middle_block.1.{m[1]}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            return f"output_blocks.{i * stride + j}.0.{_rename_head(rest, _UNET_RESNET)}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            return f"output_blocks.{i * stride + j}.1.{rest}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            i, rest = int(m[1]), m[2]
            slot = 2 if up_has_attention[i] else 1
            return f"output_blocks.{i * stride + per_level}.{slot}.conv.{rest}"
        raise KeyError(f"no original-layout name for UNet weight {key!r}")

    return {convert(key): value for key, value in unet.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------

_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    """The VAE's weights under ldm ``AutoencoderKL`` names (no ``first_stage_model.`` prefix)."""
    levels = len(vae.config.up_block_types)

    def resnet(rest: str) -> str:
        return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest

    def convert(key: str) -> str:
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            return f"{m[1]}.norm_out.{m[2]}"
        if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\..+|(post_)?quant_conv\..+", key):
            return key
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            return f"{m[1]}.mid.attn_1.{_rename_head(m[2], _VAE_ATTENTION)}"
        raise KeyError(f"no original-layout name for VAE weight {key!r}")

    converted = {}
    for key, value in vae.state_dict().items():
        name = convert(key)
        # The original attention projections are 1x1 convolutions, diffusers' are linear layers.
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", name) and value.ndim == 2:
            value = value[:, :, None, None]
        converted[name] = value
    return converted


# ----------------------------------------------------------------------------------------------
# Text encoders
# ----------------------------------------------------------------------------------------------


def clip_to_original(text_encoder) -> dict[str, torch.Tensor]:
    """CLIP ViT-L (``CLIPTextModel``): the original checkpoints keep the HF names, ``text_model.*``.

    transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` in its own state dict), so the
    prefix is put back here; diffusers' loader strips it again for such models.
    """
    return {
        (key if key.startswith("text_model.") else f"text_model.{key}"): value
        for key, value in text_encoder.state_dict().items()
        if not key.endswith("position_ids")
    }


_OPEN_CLIP_TOP_LEVEL = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}

_OPEN_CLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}


def open_clip_to_original(text_encoder_2) -> dict[str, torch.Tensor]:
    """OpenCLIP bigG (``CLIPTextModelWithProjection``) under open_clip's ``TextTransformer`` names.

    q/k/v projections are fused into ``attn.in_proj_weight`` / ``in_proj_bias`` (q, k, v order) and
    ``text_projection`` is stored transposed (``[hidden, projection]``, used as ``x @ text_projection``).
    """
    state = text_encoder_2.state_dict()
    converted: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key in _OPEN_CLIP_TOP_LEVEL:
            converted[_OPEN_CLIP_TOP_LEVEL[key]] = value
        elif key == "text_projection.weight":
            converted["text_projection"] = value.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault(f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", {})[m[2]] = value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key):
            converted[f"transformer.resblocks.{m[1]}.{_rename_head(m[2], _OPEN_CLIP_LAYER)}"] = value
        else:
            raise KeyError(f"no original-layout name for text encoder 2 weight {key!r}")
    for name, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"{name}: q/k/v projections incomplete ({sorted(parts)})")
        converted[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return converted


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def original_state_dict(pipe) -> dict[str, torch.Tensor]:
    """UNet + VAE + both text encoders of an SDXL pipeline as one original-layout state dict."""
    return {
        **_prefixed(UNET_PREFIX, unet_to_original(pipe.unet)),
        **_prefixed(VAE_PREFIX, vae_to_original(pipe.vae)),
        **_prefixed(CLIP_PREFIX, clip_to_original(pipe.text_encoder)),
        **_prefixed(OPEN_CLIP_PREFIX, open_clip_to_original(pipe.text_encoder_2)),
    }


def original_refiner_state_dict(pipe) -> dict[str, torch.Tensor]:
    """UNet + VAE + text encoder 2 of an SDXL *refiner* pipeline in original layout: the refiner
    has one embedder, OpenCLIP bigG, at ``conditioner.embedders.0.model.``."""
    return {
        **_prefixed(UNET_PREFIX, unet_to_original(pipe.unet)),
        **_prefixed(VAE_PREFIX, vae_to_original(pipe.vae)),
        **_prefixed(REFINER_OPEN_CLIP_PREFIX, open_clip_to_original(pipe.text_encoder_2)),
    }


_ALIGN = 64  # PyTorch's CPU allocator alignment
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _aligned_order(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Order the tensors so that every weight matrix/kernel starts on a 64-byte boundary, if possible.

    safetensors stores tensors back to back (no holes allowed) and ``safetensors.torch.load_file``,
    which ``from_single_file`` uses, returns views into the memory-mapped file: a tensor's address is
    its offset in the file. MKL's float32 matrix products (seen with the 1-row text projection) round
    differently depending on the weight's alignment, so the same weights at an odd address give
    outputs ~1e-6 apart. Multi-dimensional weights are placed on boundaries, with 1-D tensors
    (biases, norms) used to fill the gaps that sizes not a multiple of 64 bytes leave.
    """
    size = {key: value.numel() * value.element_size() for key, value in tensors.items()}
    # multiples of 64 bytes first (they keep the offset aligned), then the others, by name
    multi = sorted((k for k in tensors if tensors[k].ndim > 1), key=lambda k: (size[k] % _ALIGN != 0, k))
    flat = sorted(k for k in tensors if tensors[k].ndim <= 1)
    order: list[str] = []
    offset = 0
    for key in multi:
        gap = -offset % _ALIGN
        if gap:  # fill with one 1-D tensor, else with two
            pick = next(([f] for f in flat if size[f] % _ALIGN == gap), None)
            if pick is None:
                pick = next(([f, g] for i, f in enumerate(flat) for g in flat[i + 1:]
                             if (size[f] + size[g]) % _ALIGN == gap), [])
            for f in pick:
                flat.remove(f)
                order.append(f)
                offset += size[f]
        order.append(key)
        offset += size[key]
    return order + flat


def _save(state: dict[str, torch.Tensor], path, dtype: torch.dtype | None) -> Path:
    """Write a .safetensors file whose data section starts, and whose weights lie, 64-byte aligned.

    Same format as ``safetensors.torch.save_file`` (header padded with spaces, as the format allows);
    only the placement differs, see :func:`_aligned_order`.
    """
    tensors = {
        key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in state.items()
    }
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    order = _aligned_order(tensors)
    offset = 0
    for key in order:
        value = tensors[key]
        nbytes = value.numel() * value.element_size()
        header[key] = {"dtype": _DTYPE_NAMES[value.dtype], "shape": list(value.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % _ALIGN)  # data section starts on a 64-byte boundary
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key in order:
            value = tensors[key]
            if value.numel():
                f.write(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return path


def save_original_checkpoint(pipe, path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe``'s unet, vae, text_encoder and text_encoder_2 as ONE original-layout ``.safetensors``.

    Load it back with ``StableDiffusionXLPipeline.from_single_file(path, config=<diffusers folder>)``;
    tokenizers and scheduler come from that folder. ``dtype`` (e.g. ``torch.float16``) casts floating
    weights as released checkpoints do; the default keeps them as they are, for exact round trips.
    """
    return _save(original_state_dict(pipe), path, dtype)


def save_original_vae(vae, path, dtype: torch.dtype | None = None) -> Path:
    """Write the VAE alone in original layout (no ``first_stage_model.`` prefix, like ``sdxl_vae.safetensors``).

    Load it back with ``AutoencoderKL.from_single_file(path, config=<diffusers folder>, subfolder="vae")``.
    """
    return _save(vae_to_original(vae), path, dtype)


def save_original_refiner(pipe, path, dtype: torch.dtype | None = None) -> Path:
    """Write a refiner pipeline's unet, vae and text_encoder_2 as one original-layout file, like
    ``sd_xl_refiner_1.0.safetensors``. Load it back with
    ``StableDiffusionXLImg2ImgPipeline.from_single_file(path, config=<diffusers refiner folder>)``."""
    return _save(original_refiner_state_dict(pipe), path, dtype)
