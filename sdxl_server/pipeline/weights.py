"""Smaller weights: float8 storage (``FP8_WEIGHTS``) and group offloading (``CPU_OFFLOAD=group``).

Float8 storage is diffusers' layerwise casting: each layer's weights are kept in
``float8_e4m3fn`` and cast to the compute precision (DTYPE) just for its forward, so the UNet's
weights take half the memory of float16 for a small cost per step. Normalisation layers, the
embeddings and the UNet's first and last convolutions stay in DTYPE (diffusers' default skip list
for the UNet; the same idea for the CLIP text encoders), where precision matters most.

Group offloading keeps the weights on the CPU in groups of layers and copies each group to the GPU
ahead of its use on a separate CUDA stream, overlapping the copy with the computation before it:
less memory than whole-model offload at close to its speed. CUDA only.
"""

from __future__ import annotations

from typing import Any

import torch

STORAGE_DTYPE = torch.float8_e4m3fn
# Layers of the CLIP text encoders kept in the compute precision.
_TEXT_SKIP = ("embeddings", "layer_norm", "final_layer_norm", "text_projection")


def store_in_fp8(pipe: Any, which: str, compute_dtype: torch.dtype) -> list[str]:
    """Store ``pipe``'s UNet (``which="unet"``) or UNet and text encoders (``"all"``) in float8,
    computed in ``compute_dtype``; the names of the parts so stored."""
    if which == "off":
        return []
    from diffusers.hooks import apply_layerwise_casting

    pipe.unet.enable_layerwise_casting(storage_dtype=STORAGE_DTYPE, compute_dtype=compute_dtype)
    stored = ["unet"]
    if which == "all":
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, name, None)
            if encoder is not None:
                apply_layerwise_casting(encoder, storage_dtype=STORAGE_DTYPE, compute_dtype=compute_dtype,
                                        skip_modules_pattern=_TEXT_SKIP)
                stored.append(name)
    return stored


def lift_lora_weights(pipe: Any) -> int:
    """LoRA layers made beside float8-stored weights in the compute precision: PEFT creates them
    in their base layer's dtype, and float8 cannot be multiplied. How many were lifted."""
    lifted = 0
    for model in (getattr(pipe, name, None) for name in ("unet", "text_encoder", "text_encoder_2")):
        if model is None:
            continue
        params = dict(model.named_parameters())
        compute = next((p.dtype for p in params.values() if p.dtype != STORAGE_DTYPE), None)
        for name, param in params.items():
            if param.dtype == STORAGE_DTYPE and ".lora_" in name and compute is not None:
                param.data = param.data.to(compute)
                lifted += 1
    return lifted


def group_offload(pipe: Any, device: str) -> None:
    """Every model of ``pipe`` offloaded by groups of layers with CUDA streams (its VAE too)."""
    pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                              offload_type="leaf_level", use_stream=True)


def resident_bytes(module: Any) -> int:
    """The bytes ``module``'s parameters and buffers take where they are."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
