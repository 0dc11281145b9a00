"""A ControlNet from one ``.safetensors`` file, as A1111 users keep them, without the model hub.

diffusers' ``from_single_file`` fetches a config from the hub for the kind of ControlNet it
guesses (the full SDXL one, or its ``mid``/``small`` variants), which an offline server cannot
do and which fits only those exact shapes. Here the config is worked out from the file's tensors
(levels, widths, layers per level, transformer depth, text width, the control-image embedding,
a Union model's control types) and, for what tensors cannot say (attention heads, normalisation
groups, the size-conditioning embedding's width), from the running model's UNet, whose encoder
half a ControlNet copies. The weights must then fill that model exactly, or the file is refused.

Two layouts: diffusers' tensor names (``diffusers_xl_canny_mid.safetensors``, xinsir's Union
``promax`` file) and the original ``control_model.`` names, converted with diffusers' own
converter (its SDXL size-conditioning ``label_emb`` added here, which that converter leaves out).
A Union model's transformer heads are not in its tensors either: 8, as xinsir's Union models
have, unless the file's metadata says ``num_trans_head``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

UNION_HEADS = 8  # xinsir's ControlNet-Union transformer heads (the SDXL Union models published)
# What the running UNet's config gives a ControlNet made from it (as diffusers' ``from_unet`` copies).
_FROM_BASE = ("attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift",
              "addition_time_embed_dim", "upcast_attention", "resnet_time_scale_shift", "only_cross_attention",
              "class_embed_type", "addition_embed_type")


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors (in diffusers' names) and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    return state, metadata


def _to_diffusers(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """``state`` in diffusers' tensor names (the original ``control_model.`` layout converted)."""
    if "conv_in.weight" in state:
        return state
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

    converted = convert_controlnet_checkpoint(state, {"layers_per_block": layers_per_block})
    bare = {key.removeprefix("control_model."): value for key, value in state.items()}
    for name, original in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
        if original in bare:
            converted[name] = bare[original]
    return {key: value for key, value in converted.items() if value is not None}


def _indices(keys: list[str], pattern: str) -> list[int]:
    found = {int(match.group(1)) for key in keys if (match := re.match(pattern, key))}
    return sorted(found)


def _level(state: dict[str, torch.Tensor], keys: list[str], level: int) -> dict[str, Any]:
    """One down level: its width, resnets, whether it has attention, and its transformer depth."""
    prefix = f"down_blocks.{level}."
    attention = any(key.startswith(prefix + "attentions.") for key in keys)
    depth = len(_indices(keys, rf"{re.escape(prefix)}attentions\.0\.transformer_blocks\.(\d+)\.")) if attention else 1
    return {"width": state[prefix + "resnets.0.conv1.weight"].shape[0], "attention": attention, "depth": depth,
            "resnets": len(_indices(keys, rf"{re.escape(prefix)}resnets\.(\d+)\.conv1\.weight"))}


def _text_width(state: dict[str, torch.Tensor], keys: list[str], base: dict[str, Any]) -> int:
    key = next((key for key in keys if key.endswith("attn2.to_k.weight")), None)
    return int(state[key].shape[1]) if key else int(base["cross_attention_dim"])


def config_of(state: dict[str, torch.Tensor], base: dict[str, Any], metadata: dict[str, str]) -> dict[str, Any]:
    """The diffusers config of the ControlNet ``state`` holds (``base``: the running UNet's config)."""
    keys = list(state)
    levels = [_level(state, keys, level) for level in _indices(keys, r"down_blocks\.(\d+)\.")]
    embedding = _indices(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    proj_in = next((state[key] for key in keys if key.endswith("proj_in.weight")), None)
    mid_attention = any(key.startswith("mid_block.attentions.") for key in keys)
    config: dict[str, Any] = {name: base[name] for name in _FROM_BASE if name in base}
    config.update({
        "in_channels": state["conv_in.weight"].shape[1],
        "conditioning_channels": state["controlnet_cond_embedding.conv_in.weight"].shape[1],
        "conditioning_embedding_out_channels": (state["controlnet_cond_embedding.conv_in.weight"].shape[0],
                                                *(state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]
                                                  for i in embedding if i % 2 == 1)),
        "block_out_channels": tuple(level["width"] for level in levels),
        "down_block_types": tuple("CrossAttnDownBlock2D" if level["attention"] else "DownBlock2D" for level in levels),
        "layers_per_block": levels[0]["resnets"],
        "transformer_layers_per_block": tuple(level["depth"] for level in levels),
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_attention else "UNetMidBlock2D",
        "cross_attention_dim": _text_width(state, keys, base),
        "use_linear_projection": proj_in is None or proj_in.ndim == 2,
        "projection_class_embeddings_input_dim": state["add_embedding.linear_1.weight"].shape[1],
    })
    if "task_embedding" in state:
        del config["mid_block_type"]  # a Union model's mid block always has attention
        config.update({
            "num_control_type": state["task_embedding"].shape[0], "num_trans_channel": state["task_embedding"].shape[1],
            "num_proj_channel": state["spatial_ch_projs.weight"].shape[0],
            "num_trans_layer": len(_indices(keys, r"transformer_layes\.(\d+)\.")),
            "num_trans_head": int(metadata.get("num_trans_head", UNION_HEADS)),
        })
    return config


def load_single_file(path: Path, union: bool, dtype: torch.dtype, base: dict[str, Any]) -> Any:
    """The ControlNet (``union``: ControlNet-Union) in the file at ``path``, in ``dtype``, its config
    worked out from its tensors and the running UNet's config ``base``. Raises ValueError when its
    weights do not fill that model exactly (not an SDXL ControlNet of a layout read here)."""
    import diffusers

    state, metadata = read_state(path)
    state = _to_diffusers(state, int(base.get("layers_per_block", 2)))
    try:
        config = config_of(state, dict(base), metadata)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"its tensors do not make an SDXL ControlNet (no {exc})") from exc
    kind = diffusers.ControlNetUnionModel if union else diffusers.ControlNetModel
    with torch.device("meta"):
        model = kind.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"its tensors do not fit an SDXL ControlNet: {len(missing)} missing ({', '.join(missing[:3])}), "
                         f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    return model.to(dtype)
