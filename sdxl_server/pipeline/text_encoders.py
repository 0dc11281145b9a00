"""The text encoders kept on the CPU (``TEXT_ENCODER_OFFLOAD``): they visit the GPU only to encode
one job's prompts, then leave it for the UNet and the VAE (1.5 GiB of float16 weights)."""

from __future__ import annotations

from typing import Any

import torch

from ..params import GenerationParams


def park_text_encoders(pipe: Any) -> None:
    """Move the text encoders to the CPU (after ``pipe.to(device)`` put everything on the GPU)."""
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        if encoder is not None:
            encoder.to("cpu")


def encode_prompts(pipe: Any, params: GenerationParams, device: str) -> dict[str, Any]:
    """The pipeline's prompt arguments as embeddings, computed with the text encoders brought to
    ``device`` for the moment it takes and parked again after."""
    encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]
    try:
        for encoder in encoders:
            encoder.to(device)
        with torch.inference_mode():
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                params.prompt,
                device=torch.device(device),
                num_images_per_prompt=1,  # the pipeline repeats them per image itself
                do_classifier_free_guidance=params.guidance_scale > 1,
                negative_prompt=params.negative_prompt or None,
            )
    finally:
        for encoder in encoders:
            encoder.to("cpu")
    return {
        "prompt_embeds": embeds, "negative_prompt_embeds": negative,
        "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled,
    }
