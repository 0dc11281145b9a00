"""The LoRA files in ``LORA_DIR``: what each is, read from its safetensors header (no torch).

A safetensors file starts with an 8-byte little-endian length and a JSON header naming every
tensor and an optional ``__metadata__`` object, so the layout (kohya/A1111 ``lora_unet_…`` keys or
diffusers' ``unet.….lora_A`` keys), the base model family (kohya's ``ss_base_model_version``, or
``modelspec.architecture``) and whether it is a LoRA at all are known without loading a tensor.
The API lists and checks requests with this module; the worker loads the files
(:mod:`.loras`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat as stat_
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Unusable
from .presets import NO_SIDECAR, Sidecar, read_lora_sidecar

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
    sidecar: Sidecar = NO_SIDECAR  # A1111's name.json: its card fields and recommended settings (presets.py)

    def describe(self, root: Path) -> dict[str, Any]:
        return {
            "name": self.name, "file": str(self.path.relative_to(root)), "size": self.size,
            "layout": self.layout, "base_model": self.family, "usable": self.problem is None, "problem": self.problem,
            **self.sidecar.describe(),
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
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except RecursionError:
            raise ValueError("not a safetensors file (header nested too deeply)") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not an object)")
    return header


def header_problem(header: dict[str, Any]) -> str | None:
    """What is wrong with a header's shape (None: nothing), as safetensors lays it out (and reads
    it when the file is loaded): an optional ``__metadata__`` object of strings and, for each
    tensor, an object with a string ``dtype``, a ``shape`` of non-negative integers and two integer
    ``data_offsets``. Valid JSON of another shape must make one file unusable, never every listing fail."""
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        return "not a safetensors file (__metadata__ is not an object of strings)"
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(spec, dict):
            return f"not a safetensors file (tensor {key[:80]!r} is not an object)"
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if not isinstance(spec.get("dtype"), str) or not _integers(shape) or not _integers(offsets) or len(offsets) != 2:
            return f"not a safetensors file (tensor {key[:80]!r} has no dtype, integer shape and two data offsets)"
    return None


def _integers(value: Any) -> bool:
    return isinstance(value, list) and all(type(item) is int and item >= 0 for item in value)


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
            shape = spec["shape"]  # integers: header_problem checked
            if len(shape) == 2:
                return shape[1]
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


def inspect(path: Path, stat: os.stat_result | None = None) -> LoraFile:
    """What ``path`` is; never raises for a bad file (``problem`` says what is wrong)."""
    stat = stat or path.stat()
    name = path.stem
    try:
        header = read_header(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return LoraFile(name, path, stat.st_size, stat.st_mtime, "unknown", None, problem=f"unreadable: {exc}")
    problem = header_problem(header)
    if problem:
        return LoraFile(name, path, stat.st_size, stat.st_mtime, "unknown", None, problem=problem)
    metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    keys = list(header)
    layout, family = _layout(keys), _family(metadata, keys)
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
    """The LoRAs in one folder, scanned on demand (``refresh``) and when a name is not found. A
    file's header is read again only when its size or modification time changed: a header may
    hold megabytes of metadata, and a request naming unknown LoRAs rescans the folder."""

    # What one file is (a staticmethod): :mod:`.embedding_files` scans its folder the same way.
    reader = staticmethod(inspect)
    # A file's sidecar, read at every scan (it may change while the file does not).
    sidecar_reader: Any = staticmethod(read_lora_sidecar)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._files: dict[str, LoraFile] = {}
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()  # one scan at a time; the others wait for its result
        self._inspected: dict[Path, tuple[tuple[int, int], LoraFile]] = {}  # (size, mtime_ns) -> what it is
        self._scanned = False

    def refresh(self) -> list[LoraFile]:
        with self._scan_lock:
            found: dict[str, LoraFile] = {}
            seen: dict[Path, tuple[tuple[int, int], LoraFile]] = {}
            if self.root.is_dir():
                for path in sorted(self.root.rglob("*.safetensors")):
                    file = self._inspect(path, seen)
                    if file is not None:
                        found.setdefault(path.stem, file)
            self._inspected = seen
        with self._lock:
            self._files, self._scanned = found, True
        return list(found.values())

    def _inspect(self, path: Path, seen: dict[Path, tuple[tuple[int, int], LoraFile]]) -> LoraFile | None:
        """``path``'s reading, from the last scan when the file is unchanged; None if it is no file (now)."""
        try:
            stat = path.stat()
        except OSError:  # deleted since the folder was listed
            return None
        if not stat_.S_ISREG(stat.st_mode):
            return None
        key = (stat.st_size, stat.st_mtime_ns)
        cached = self._inspected.get(path)
        file = cached[1] if cached is not None and cached[0] == key else self.reader(path, stat)
        seen[path] = (key, file)
        if self.sidecar_reader is not None:
            file = dataclasses.replace(file, sidecar=self.sidecar_reader(path))
        return file

    def files(self) -> list[LoraFile]:
        if not self._scanned:
            return self.refresh()
        with self._lock:
            return list(self._files.values())

    def find(self, name: str) -> LoraFile | None:
        return self._lookup([name]).get(name)

    def _lookup(self, names: list[str]) -> dict[str, LoraFile]:
        """The files by name, the folder scanned again (once, whatever the number of names) when
        one of ``names`` is not known or its file is gone."""
        with self._lock:
            files = dict(self._files) if self._scanned else None
        if files is None or any(name not in files or not files[name].path.is_file() for name in names):
            files = {f.name: f for f in self.refresh()}
        return files

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
        places = {name: where for name, _, where in wanted}
        files = self._lookup(list(places))
        for name, where in places.items():
            found = files.get(name)
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
