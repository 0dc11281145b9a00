"""The models a server can serve: the default (``MODEL_ID`` / ``MODEL_DIR`` / the Hub, as before)
and every checkpoint in ``MODELS_DIR`` (diffusers folders and single ``.safetensors`` files).

Plain file logic, no torch: the API lists the models and checks a request's ``model`` with it; the
worker asks it where a name's files are. A checkpoint that cannot be loaded is listed as broken,
with the reason, as far as that can be told without loading it (an unreadable header, a folder
without its parts, a file without UNet weights).
"""

from __future__ import annotations

import dataclasses
import json
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import Unusable
from .lora_files import header_problem, read_header
from .presets import NO_SIDECAR, Sidecar, read_model_sidecar
from .sources import ModelSource, resolve_model_source

# The longest model name a request may send: a path in MODELS_DIR with A1111's " [hash]" fits.
MAX_MODEL_NAME = 1024
OPENAI_DEFAULT_PREFIXES = ("dall-e", "gpt-image")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: ModelSource
    size: int | None  # bytes on disk; None for a Hub model
    default: bool = False
    broken: str | None = None
    sidecar: Sidecar = NO_SIDECAR  # its recommended settings (presets.py)

    @property
    def kind(self) -> str:
        return self.source.kind

    def describe(self, loaded: dict[str, str]) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "source": self.source.location, "origin": self.source.origin,
            "size": self.size, "default": self.default, "loaded": loaded.get(self.name), "broken": self.broken,
            **self.sidecar.describe(),
        }

    def a1111(self) -> dict[str, Any]:
        path = Path(self.source.location)
        return {"title": self.name, "model_name": self.name, "hash": None, "sha256": None,
                "filename": str(path), "config": None}


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _folder_problem(path: Path) -> str | None:
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        return f"model_index.json unreadable: {exc}"
    if not isinstance(index, dict) or "unet" not in index:
        return "model_index.json names no unet: not an SDXL pipeline folder"
    missing = [part for part, spec in index.items()
               if isinstance(spec, list) and spec and spec[0] is not None and not (path / part).is_dir()]
    return f"missing parts: {', '.join(sorted(missing))}" if missing else None


def _file_problem(path: Path) -> str | None:
    try:
        header = read_header(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"unreadable: {exc}"
    problem = header_problem(header)
    if problem:
        return problem
    if not any(key.startswith("model.diffusion_model.") for key in header):
        return "no UNet weights (model.diffusion_model.*): not a full checkpoint (a LoRA or a VAE?)"
    return None


def without_hash(name: str) -> str:
    """``name`` without A1111's hash suffix (``"name.safetensors [abcdef1234]"``): at least 8 hex
    digits in brackets at the end. String operations, linear in the name: the pattern
    ``\\s*\\[[0-9a-fA-F]{8,}\\]$`` backtracks quadratically over a run of spaces."""
    text = name.strip()
    if text.endswith("]"):
        head, bracket, digits = text[:-1].rpartition("[")
        if bracket and len(digits) >= 8 and all(char in string.hexdigits for char in digits):
            return head.rstrip()
    return text


def _default_name(source: ModelSource) -> str:
    if source.kind in ("tiny", "hub"):
        return source.model_id
    path = Path(source.location)
    return path.stem if path.suffix == ".safetensors" else path.name


def _with_sidecar(entry: ModelEntry) -> ModelEntry:
    """``entry`` with the preset of its sidecar (a local model's only); its ``vae`` is loaded with it."""
    if entry.kind not in ("folder", "single_file"):
        return entry
    sidecar = read_model_sidecar(Path(entry.source.location))
    source = dataclasses.replace(entry.source, vae=sidecar.vae) if sidecar.vae else entry.source
    return dataclasses.replace(entry, source=source, sidecar=sidecar)


def scan(settings: Settings, file_problem: Callable[[Path], str | None] = _file_problem) -> list[ModelEntry]:
    """The default model first, then ``MODELS_DIR``'s, sorted by name (a clash keeps the first),
    each with its sidecar's preset."""
    return [_with_sidecar(entry) for entry in _scan(settings, file_problem)]


def _scan(settings: Settings, file_problem: Callable[[Path], str | None]) -> list[ModelEntry]:
    source = resolve_model_source(settings)
    location = Path(source.location)
    size = None
    if source.kind == "folder" and location.is_dir():
        size = _folder_size(location)
    elif source.kind == "single_file" and location.is_file():
        size = location.stat().st_size
    entries = {_default_name(source): ModelEntry(_default_name(source), source, size, default=True)}
    root = settings.models_dir
    if root.is_dir():
        for path in sorted(root.iterdir()):
            name = path.stem if path.suffix == ".safetensors" else path.name
            if name in entries or path.name.startswith("."):
                continue
            if path.is_dir() and (path / "model_index.json").exists():
                found = ModelSource("folder", str(path), "MODELS_DIR", settings.vae_id)
                entries[name] = ModelEntry(name, found, _folder_size(path), broken=_folder_problem(path))
            elif path.is_file() and path.suffix == ".safetensors":
                found = ModelSource("single_file", str(path), "MODELS_DIR", settings.vae_id)
                entries[name] = ModelEntry(name, found, path.stat().st_size, broken=file_problem(path))
    return list(entries.values())


class ModelCatalog:
    """The scanned models and the current default (A1111's ``sd_model_checkpoint`` changes it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._entries: dict[str, ModelEntry] = {}
        self._problems: dict[Path, tuple[tuple[int, int], str | None]] = {}  # by (size, mtime_ns)
        self.default_name = ""
        self.refresh()

    def refresh(self) -> list[ModelEntry]:
        entries = {entry.name: entry for entry in scan(self.settings, self._file_problem)}
        with self._lock:
            self._entries = entries
            if self.default_name not in entries:
                self.default_name = next(iter(entries))
        return list(entries.values())

    def _file_problem(self, path: Path) -> str | None:
        """:func:`_file_problem`, read again only when the file's size or modification time
        changed: a checkpoint's header is megabytes, and a request naming an unknown model rescans."""
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        cached = self._problems.get(path)
        if cached is None or cached[0] != key:
            cached = self._problems[path] = (key, _file_problem(path))
        return cached[1]

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            default = self.default_name
            return [dataclasses.replace(e, default=e.name == default) for e in self._entries.values()]

    def get(self, name: str) -> ModelEntry | None:
        with self._lock:
            found = self._entries.get(name)
        if found is None:
            found = {e.name: e for e in self.refresh()}.get(name)
        return found

    def lookup(self, wanted: str | None) -> str:
        """The model name a request's ``wanted`` means (None or "": the default); :class:`Unusable`
        (about ``model``) naming what exists. An unknown name rescans ``MODELS_DIR`` once."""
        if not wanted:
            return self.default_name
        if len(wanted) > MAX_MODEL_NAME:
            message = f"At most {MAX_MODEL_NAME} characters (got {len(wanted)})."
            raise Unusable(f"model: {message}", fields={"model": [message]})
        name = without_hash(wanted)
        entry = self._entry_for(name)
        if entry is None:
            self.refresh()
            entry = self._entry_for(name)
        have = ", ".join(e.name for e in self.entries() if not e.broken)
        if entry is None:
            raise Unusable(f"unknown model {wanted!r}: this server has {have}",
                           fields={"model": [f"Unknown model; one of: {have}."]})
        if entry.broken:
            raise Unusable(f"model {entry.name!r} cannot be loaded: {entry.broken}; working models: {have}",
                           fields={"model": [f"Broken: {entry.broken}."]})
        return entry.name

    def _entry_for(self, name: str) -> ModelEntry | None:
        """The entry ``name`` means (its name, a file name, a stem or a location), as scanned last."""
        with self._lock:
            entries = dict(self._entries)
        for candidate in dict.fromkeys([name, Path(name).name, Path(name).stem]):
            if candidate in entries:
                return entries[candidate]
        return next((e for e in entries.values() if e.source.location == name), None)

    def set_default(self, wanted: str) -> str:
        name = self.lookup(wanted)
        with self._lock:
            self.default_name = name
        return name
