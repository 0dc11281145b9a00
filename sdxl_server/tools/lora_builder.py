"""Small LoRAs built offline for a loaded SDXL UNet, in both layouts the server reads (used by the
bench and the tests; nothing is downloaded).

A PEFT ``LoraConfig`` on the UNet's attention projections with random (not zero) ``lora_B`` so the
LoRA changes the image; ``get_peft_model_state_dict`` takes its weights out. The diffusers layout
is written by ``StableDiffusionXLPipeline.save_lora_weights``; the kohya/A1111 layout is the same
weights under kohya's names (``lora_unet_<module with _>.lora_down/lora_up/alpha``).
"""

from __future__ import annotations

from pathlib import Path

import torch

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
RANK = 4


def lora_weights(model_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS, init_lora_weights=False))
    return {key: value.detach().clone().contiguous() for key, value in get_peft_model_state_dict(unet).items()}


def save_diffusers_layout(weights: dict[str, torch.Tensor], path: Path) -> Path:
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline.save_lora_weights(path.parent, unet_lora_layers=weights, weight_name=path.name)
    return path


def save_kohya_layout(weights: dict[str, torch.Tensor], path: Path, base_model: str = "sdxl_base_v1-0") -> Path:
    from safetensors.torch import save_file

    kohya: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        module, kind = key.rsplit(".lora_", 1)  # "down_blocks.1...to_q", "A.weight"
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(float(RANK))
    save_file(kohya, str(path), metadata={"ss_base_model_version": base_model, "ss_network_module": "networks.lora"})
    return path


def lora_weights_for(unet: torch.nn.Module, seed: int, rank: int = RANK) -> dict[str, torch.Tensor]:
    """Random LoRA weights (diffusers/PEFT key names) for any loaded UNet, from its layers' shapes
    alone: what the bench times LoRAs with on a model whose folder it does not have."""
    generator = torch.Generator("cpu").manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0"):
            if not isinstance(module, torch.nn.Linear):
                continue
            weights[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            weights[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.1
    return weights
