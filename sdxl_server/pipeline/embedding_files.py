"""The textual-inversion embeddings in ``EMBEDDINGS_DIR``, read from their safetensors headers (no torch).

An SDXL embedding holds two tensors, ``clip_l`` (for the first text encoder) and ``clip_g`` (for
the second), each ``[vectors, width]``: 768 and 1280 wide for SDXL. SD 1.x/2.x embeddings
(``emb_params``, ``string_to_param``) and files of other shapes are listed with the reason they
cannot be used, so a folder shared with an SD 1.5 install shows what was skipped instead of failing.
The widths a model takes are checked when the worker loads them (:mod:`.embeddings`), since this
module knows no model. The API lists the folder with this module; it never loads a tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lora_files import LoraCatalog, header_problem, read_header

PARTS = ("clip_l", "clip_g")  # the tensor for text_encoder / tokenizer, then text_encoder_2 / tokenizer_2
_OTHER_FAMILIES = {  # the tensor that marks an embedding of another family: what it is
    "emb_params": "an SD 1.x/2.x embedding (emb_params)",
    "string_to_param": "an SD 1.x/2.x embedding (string_to_param)",
}


@dataclass
class EmbeddingFile:
    """One ``.safetensors`` in ``EMBEDDINGS_DIR``; ``problem`` says why it cannot be used (None: usable)."""

    name: str  # the file's stem: the word a prompt uses
    path: Path
    size: int
    mtime: float
    widths: tuple[int, ...] = ()  # clip_l's width, clip_g's width
    vectors: int = 0
    problem: str | None = None

    def a1111(self) -> dict[str, Any]:
        """One entry of ``GET /sdapi/v1/embeddings`` in A1111's shape (``shape``: both widths
        together, as A1111 gives an SDXL embedding), plus ``reason`` for a skipped one."""
        entry: dict[str, Any] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                 "shape": sum(self.widths) or None, "vectors": self.vectors or None}
        if self.problem:
            entry["reason"] = self.problem
        return entry


def _shape_problem(header: dict[str, Any]) -> tuple[str | None, tuple[int, ...], int]:
    """(what is wrong, the two widths, the vectors) for an SDXL embedding's header."""
    for key, family in _OTHER_FAMILIES.items():
        if key in header:
            return f"{family}, not an SDXL one (clip_l and clip_g)", (), 0
    missing = [part for part in PARTS if part not in header]
    if missing:
        keys = ", ".join(sorted(k for k in header if k != "__metadata__")[:5]) or "none"
        return f"not an SDXL embedding: no {' or '.join(missing)} tensor (tensors: {keys})", (), 0
    shapes = [header[part]["shape"] for part in PARTS]
    if any(len(shape) != 2 or 0 in shape for shape in shapes):
        return f"not an SDXL embedding: clip_l and clip_g must be [vectors, width], not {shapes[0]} and {shapes[1]}", (), 0
    if shapes[0][0] != shapes[1][0]:
        return f"clip_l has {shapes[0][0]} vectors and clip_g {shapes[1][0]}: they must match", (), 0
    return None, (shapes[0][1], shapes[1][1]), shapes[0][0]


def inspect(path: Path, stat: os.stat_result | None = None) -> EmbeddingFile:
    """What ``path`` is; never raises for a bad file (``problem`` says what is wrong)."""
    stat = stat or path.stat()
    found = EmbeddingFile(path.stem, path, stat.st_size, stat.st_mtime)
    try:
        header = read_header(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        found.problem = f"unreadable: {exc}"
        return found
    found.problem = header_problem(header)
    if found.problem is None:
        found.problem, found.widths, found.vectors = _shape_problem(header)
    if found.problem is None and not _is_word(found.name):
        found.problem = "the file name must be one word (letters, digits, '_' or '-') to be used in a prompt"
    return found


def _is_word(name: str) -> bool:
    return bool(name) and all(char.isalnum() or char in "_-" for char in name)


class EmbeddingCatalog(LoraCatalog):
    """The embeddings in one folder, scanned as :class:`LoraCatalog` scans LoRAs (a header read
    again only when its file's size or modification time changed). Only its listing is used:
    requests name embeddings in their prompts' words, not in a field to check."""

    reader = staticmethod(inspect)
    sidecar_reader = None
