"""The upscalers a request may name: the built-in resamplers (no weights) and the model files in
``UPSCALERS_DIR`` (``.pth``, ``.safetensors``), each listed with its scale and architecture, or,
when spandrel cannot read it, with the reason.

No torch at import: the API lists and checks upscalers with this (off the event loop, since a
file seen for the first time is read once with spandrel to learn what it is; it is read again only
when its size or modification time changes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Unusable, short_message

NONE = "None"  # A1111's "no upscaler": the image is kept as it is
# The built-in resamplers (PIL's filters by A1111's names), usable with no weights.
BUILTINS = ("Lanczos", "Nearest")
MAX_UPSCALER_NAME = 256


@dataclass(frozen=True)
class UpscalerEntry:
    """One upscaler. ``path`` is None for a built-in; ``broken`` says why a file cannot be used."""

    name: str
    path: Path | None = None
    scale: int | None = None
    architecture: str | None = None
    size: int | None = None
    broken: str | None = None

    @property
    def builtin(self) -> bool:
        return self.path is None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": "builtin" if self.builtin else "model", "scale": self.scale,
            "architecture": self.architecture or ("resampler" if self.builtin else None),
            "file": self.path.name if self.path else None, "size": self.size, "broken": self.broken,
        }

    def a1111(self) -> dict[str, Any]:
        """As A1111's ``/sdapi/v1/upscalers`` lists it."""
        return {"name": self.name, "model_name": None if self.builtin else self.name,
                "model_path": str(self.path) if self.path else None, "model_url": None, "scale": self.scale or 4}


def _identify(path: Path) -> tuple[int, str]:
    from .upscaler_models import identify  # torch and spandrel: only when a new file is seen

    found = identify(path)
    return found.scale, found.architecture


Identify = Callable[[Path], tuple[int, str]]


class UpscalerCatalog:
    """The built-ins, then the files of ``directory`` (and ``extra``: name -> file, e.g. the tiny
    upscaler of the offline demo), sorted by name."""

    def __init__(self, directory: Path, extra: Mapping[str, Path] | None = None, identify: Identify = _identify) -> None:
        self.directory = directory
        self.extra = dict(extra or {})
        self._identify = identify
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[tuple[int, int], UpscalerEntry]] = {}  # by (size, mtime_ns)

    def _files(self) -> dict[str, Path]:
        found = dict(self.extra)
        if self.directory.is_dir():
            for path in sorted(self.directory.iterdir()):
                if path.suffix.lower() in (".pth", ".safetensors") and path.is_file() and not path.name.startswith("."):
                    found.setdefault(path.stem, path)
        return found

    def _entry(self, name: str, path: Path) -> UpscalerEntry:
        try:
            stat = path.stat()
        except OSError as exc:
            return UpscalerEntry(name, path, broken=f"unreadable: {short_message(exc)}")
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._known.get(path)
        if cached is not None and cached[0] == key and cached[1].name == name:
            return cached[1]
        try:
            scale, architecture = self._identify(path)
            entry = UpscalerEntry(name, path, scale, architecture, stat.st_size)
        except Exception as exc:  # noqa: BLE001 - whatever spandrel or torch raise, the file is listed with it
            entry = UpscalerEntry(name, path, size=stat.st_size, broken=short_message(exc))
        with self._lock:
            self._known[path] = (key, entry)
        return entry

    def entries(self) -> list[UpscalerEntry]:
        """Every upscaler, built-ins first; files read again where they changed (not on the event loop)."""
        builtins = [UpscalerEntry(name) for name in BUILTINS]
        return builtins + [self._entry(name, path) for name, path in self._files().items() if name not in BUILTINS]

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries() if not entry.broken]

    def lookup(self, wanted: str | None, field: str = "upscaler") -> UpscalerEntry:
        """The usable upscaler ``wanted`` names (None, "" or "None": :data:`NONE`, a built-in
        that keeps the size); :class:`Unusable` about ``field`` naming the available ones."""
        if not wanted or wanted == NONE:
            return UpscalerEntry(NONE)
        if len(wanted) > MAX_UPSCALER_NAME:
            message = f"At most {MAX_UPSCALER_NAME} characters (got {len(wanted)})."
            raise Unusable(f"{field}: {message}", fields={field: [message]})
        entries = self.entries()
        have = ", ".join(entry.name for entry in entries if not entry.broken)
        entry = next((e for e in entries if e.name == wanted), None)
        if entry is None:
            entry = next((e for e in entries if e.name.lower() == wanted.lower() or (e.path and e.path.name == wanted)), None)
        if entry is None:
            raise Unusable(f"{field}: unknown upscaler {wanted!r}; this server has {have}",
                           fields={field: [f"Unknown upscaler; one of: {have}."]})
        if entry.broken:
            raise Unusable(f"{field}: upscaler {entry.name!r} cannot be used: {entry.broken}; working upscalers: {have}",
                           fields={field: [f"Unusable: {entry.broken}."]})
        return entry
