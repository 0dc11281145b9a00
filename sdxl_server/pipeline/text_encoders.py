"""The text encoders kept on the CPU (``TEXT_ENCODER_OFFLOAD``): they visit the GPU only to encode
one job's prompts, then leave it for the UNet and the VAE (1.5 GiB of float16 weights)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def park_text_encoders(pipe: Any) -> None:
    """Move the text encoders to the CPU (after ``pipe.to(device)`` put everything on the GPU)."""
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        if encoder is not None:
            encoder.to("cpu")


@contextlib.contextmanager
def text_encoders_on(pipe: Any, device: str) -> Iterator[None]:
    """The text encoders on ``device`` for the moment the prompts take, parked on the CPU after."""
    encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]
    try:
        for encoder in encoders:
            encoder.to(device)
        yield
    finally:
        for encoder in encoders:
            encoder.to("cpu")
