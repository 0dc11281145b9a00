"""Tiny LoRAs for the tiny model (built by :mod:`sdxl_server.tools.lora_builder`), and fake
safetensors files for the bad-input tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from sdxl_server.tools.lora_builder import lora_weights, save_diffusers_layout, save_kohya_layout

__all__ = ["lora_weights", "save_diffusers_layout", "save_kohya_layout", "write_fake_safetensors"]


def write_fake_safetensors(path: Path, tensors: dict[str, list[int]], metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file with zero-filled float32 tensors of the given shapes."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path
