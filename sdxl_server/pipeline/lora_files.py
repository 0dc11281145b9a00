"""The LoRA files in ``LORA_DIR``: what each is, read from its safetensors header (no torch).

A safetensors file starts with an 8-byte little-endian length and a JSON header naming every
tensor and an optional ``__metadata__`` object, so the layout (kohya/A1111 ``lora_unet_…`` keys or
diffusers' ``unet.….lora_A`` keys), the base model family (kohya's ``ss_base_model_version``, or
``modelspec.architecture``) and whether it is a LoRA at all are known without loading a tensor.
The API lists and checks requests with this module; the worker loads the files
(:mod:`.loras`).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Unusable

WEIGHT_MIN, WEIGHT_MAX = -5.0, 5.0
_MAX_HEADER = 100 * 1024 * 1024
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.", "transformer.")
_DIFFUSERS_MARKERS = ("lora_A", "lora_B", "lora.down", "lora.up", "lora_linear_layer")


@dataclass
class LoraFile:
    """One ``.safetensors`` in ``LORA_DIR``; ``problem`` says why it cannot be used (None: usable)."""

    name: str
    path: Path
    size: int
    mtime: float
    layout: str  # "kohya", "diffusers" or "unknown"
    family: str | None  # "sdxl", "sd1", "sd2", another architecture name, or None (not stated)
    metadata: dict[str, str] = field(default_factory=dict)
    problem: str | None = None
    context_width: int | None = None  # what its cross-attention keys read: 2048 for SDXL, 768 for SD 1.x


    def describe(self, root: Path) -> dict[str, Any]:
        return {
            "name": self.name, "file": str(self.path.relative_to(root)), "size": self.size,
            "layout": self.layout, "base_model": self.family, "usable": self.problem is None, "problem": self.problem,
        }

    def a1111(self) -> dict[str, Any]:
        """One entry of ``GET /sdapi/v1/loras``, in A1111's shape."""
        return {"name": self.name, "alias": self.metadata.get("ss_output_name") or self.name,
                "path": str(self.path), "metadata": self.metadata}


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file; ``ValueError`` if it is not one."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if not 2 <= length <= _MAX_HEADER:
            raise ValueError("not a safetensors file (bad header length)")
        header = json.loads(handle.read(length).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not an object)")
    return header


def _layout(keys: list[str]) -> str:
    if any(key.startswith(("lora_unet_", "lora_te")) and ("lora_down" in key or "lora_up" in key) for key in keys):
        return "kohya"
    if any(key.startswith(_DIFFUSERS_PREFIXES) and any(m in key for m in _DIFFUSERS_MARKERS) for key in keys):
        return "diffusers"
    return "unknown"


def _context_width(header: dict[str, Any]) -> int | None:
    """The text-conditioning width the LoRA was made for: the input width of a cross-attention
    key projection's down (A) matrix, read from the header's shapes."""
    for key, spec in header.items():
        flat = key.replace(".", "_")
        if "attn2_to_k" in flat and ("lora_down" in flat or "lora_A" in flat) and isinstance(spec, dict):
            shape = spec.get("shape") or []
            if len(shape) == 2:
                return int(shape[1])
    return None


def _family(metadata: dict[str, str], keys: list[str]) -> str | None:
    version = (metadata.get("ss_base_model_version") or "").lower()
    architecture = (metadata.get("modelspec.architecture") or "").lower()
    for text in (version, architecture):
        if "xl" in text:
            return "sdxl"
        if text.startswith(("sd_v1", "stable-diffusion-v1")):
            return "sd1"
        if text.startswith(("sd_v2", "stable-diffusion-v2")):
            return "sd2"
        if text:
            return text.split("/")[0]
    if any(key.startswith("lora_te_") for key in keys):  # one text encoder: SD 1.x/2.x, kohya layout
        return "sd1"
    return None


def inspect(path: Path) -> LoraFile:
    """What ``path`` is; never raises for a bad file (``problem`` says what is wrong)."""
    stat = path.stat()
    name = path.stem
    try:
        header = read_header(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return LoraFile(name, path, stat.st_size, stat.st_mtime, "unknown", None, problem=f"unreadable: {exc}")
    metadata = {k: str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    keys = list(header)
    layout, family = _layout(keys), _family(metadata, keys)
    problem = None
    if layout == "unknown":
        problem = "not a LoRA (no lora_down/lora_up or lora_A/lora_B weights)"
    elif family not in (None, "sdxl"):
        problem = f"a LoRA for {family}, not for SDXL"
    return LoraFile(name, path, stat.st_size, stat.st_mtime, layout, family, metadata, problem, _context_width(header))


def a1111_hash(path: Path) -> str:
    """A1111's LoRA hash of a safetensors file (sha256 of the data after the header, as kohya's
    "addnet" hash); its first 12 characters are the short hash in ``Lora hashes:``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(8 + length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LoraCatalog:
    """The LoRAs in one folder, scanned on demand (``refresh``) and when a name is not found."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._files: dict[str, LoraFile] = {}
        self._lock = threading.Lock()
        self._scanned = False

    def refresh(self) -> list[LoraFile]:
        found: dict[str, LoraFile] = {}
        if self.root.is_dir():
            for path in sorted(self.root.rglob("*.safetensors")):
                if path.is_file():
                    found.setdefault(path.stem, inspect(path))
        with self._lock:
            self._files, self._scanned = found, True
        return list(found.values())

    def files(self) -> list[LoraFile]:
        if not self._scanned:
            return self.refresh()
        with self._lock:
            return list(self._files.values())

    def find(self, name: str) -> LoraFile | None:
        with self._lock:
            found = self._files.get(name) if self._scanned else None
        if found is None or not found.path.is_file():
            found = {f.name: f for f in self.refresh()}.get(name)
        return found

    def check(self, wanted: list[tuple[str, float, str]], max_loras: int) -> tuple[tuple[str, float], ...]:
        """Validate ``(name, weight, field)`` requests; the ``(name, weight)`` pairs to apply, one
        per name (a later mention wins). Raises :class:`Unusable` naming every problem."""
        chosen: dict[str, float] = {}
        fields_: dict[str, list[str]] = {}
        for name, weight, where in wanted:
            chosen[name] = weight
            if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
                fields_.setdefault(where, []).append(f"LoRA {name!r}: weight {weight:g} is outside {WEIGHT_MIN:g} to {WEIGHT_MAX:g}.")
        if len(chosen) > max_loras:
            fields_.setdefault("loras", []).append(f"{len(chosen)} LoRAs asked for; at most {max_loras} (MAX_LORAS).")
        unknown, unusable = [], []
        for name, where in {name: where for name, _, where in wanted}.items():
            found = self.find(name)
            if found is None:
                unknown.append(name)
                fields_.setdefault(where, []).append(f"Unknown LoRA {name!r}.")
            elif found.problem:
                unusable.append(f"{name!r} ({found.path.name}: {found.problem})")
                fields_.setdefault(where, []).append(f"LoRA {name!r} cannot be used: {found.problem}.")
        if fields_:
            parts = []
            if unknown:
                have = ", ".join(sorted(f.name for f in self.files() if not f.problem)) or "none"
                parts.append(f"unknown LoRA {', '.join(map(repr, unknown))} (in LORA_DIR: {have})")
            if unusable:
                parts.append("unusable LoRA " + ", ".join(unusable))
            message = "; ".join(parts) or next(iter(fields_.values()))[0]
            raise Unusable(message, fields=fields_)
        return tuple(chosen.items())
