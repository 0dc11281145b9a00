"""The ControlNets in ``CONTROLNET_DIR``: what each is, read from its config or safetensors header (no torch).

A diffusers folder says its class (``ControlNetModel``, ``ControlNetUnionModel``) and, by SDXL's
``text_time`` conditioning and its width, whether it is an SDXL ControlNet; a single
``.safetensors`` file says the same by its tensor names (diffusers' or the original
``control_model.`` layout: SDXL's has the added time embedding, ``add_embedding`` /
``label_emb``; a Union model has its ``task_embedding``). The control type is read from the
name where it says one. The API lists and checks requests with this module; the worker loads
the models (:mod:`.controlnets`).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ValidationFailed
from .lora_files import header_problem, read_header

# Control types a name may state, most specific first (as the extension's control types name them).
_TYPES = ("canny", "depth", "openpose", "lineart", "softedge", "scribble", "tile", "inpaint", "mlsd",
          "normal", "seg", "blur", "recolor", "sketch", "ip-adapter", "reference")
# The control types of SDXL ControlNet-Union (xinsir's order: each model's ``control_type`` slot).
UNION_TYPES = ("openpose", "depth", "softedge", "canny", "normal", "segment", "tile", "repaint")
_NOT_SDXL = "not an SDXL ControlNet ({why}): choose one made for SDXL"


@dataclass(frozen=True)
class ControlNetFile:
    """One ControlNet in ``CONTROLNET_DIR``; ``problem`` says why it cannot be used (None: usable)."""

    name: str
    path: Path
    layout: str  # "folder" or "single_file"
    union_types: tuple[str, ...]  # a ControlNet-Union model's control types (empty: not a Union model)
    control_type: str | None
    problem: str | None = None

    @property
    def union(self) -> bool:
        return bool(self.union_types)

    def describe(self, root: Path) -> dict[str, Any]:
        return {
            "name": self.name, "file": str(self.path.relative_to(root)), "layout": self.layout,
            "type": "union" if self.union else self.control_type, "union": self.union,
            "control_types": list(self.union_types), "usable": self.problem is None,
            "problem": self.problem,
        }


def _control_type(name: str) -> str | None:
    lowered = name.lower()
    return next((kind for kind in _TYPES if re.search(rf"(^|[^a-z]){re.escape(kind)}", lowered)), None)


def _types(count: Any) -> tuple[str, ...]:
    return UNION_TYPES[: count if isinstance(count, int) and count > 0 else 0]


def _folder_facts(path: Path) -> tuple[tuple[str, ...], str | None]:
    """(Union control types, problem) from a diffusers folder's ``config.json``."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return (), f"config.json unreadable: {str(exc)[:200]}"
    if not isinstance(config, dict):
        return (), "config.json is not an object"
    kind = config.get("_class_name")
    if kind not in ("ControlNetModel", "ControlNetUnionModel"):
        return (), f"not a ControlNet (its config.json names {str(kind)[:80]!r})"
    if config.get("addition_embed_type") != "text_time":
        return (), _NOT_SDXL.format(why="no SDXL size-and-crop conditioning: SD 1.x or 2.x")
    return (_types(config.get("num_control_type", 6)) if kind == "ControlNetUnionModel" else ()), None


def _file_facts(path: Path) -> tuple[tuple[str, ...], str | None]:
    """(Union control types, problem) from a single file's safetensors header."""
    try:
        header = read_header(path)
    except (OSError, ValueError) as exc:
        return (), str(exc)[:200]
    problem = header_problem(header)
    if problem:
        return (), problem
    keys = [key for key in header if key != "__metadata__"]
    if not any("controlnet_cond_embedding" in key or "input_hint_block" in key for key in keys):
        return (), "not a ControlNet (no control-image embedding among its tensors)"
    if not any(key.startswith(("add_embedding.", "control_model.label_emb.", "label_emb.")) for key in keys):
        return (), _NOT_SDXL.format(why="no SDXL size-and-crop conditioning: SD 1.x or 2.x")
    task = next((header[key]["shape"] for key in keys if key.endswith("task_embedding")), None)
    return (_types(task[0]) if task else ()), None


def inspect(path: Path) -> ControlNetFile | None:
    """What ``path`` (an entry of ``CONTROLNET_DIR``) is; None when it is no candidate at all."""
    if path.name.startswith("."):
        return None
    if path.is_dir() and (path / "config.json").exists():
        types, problem = _folder_facts(path)
        return ControlNetFile(path.name, path, "folder", types, _control_type(path.name), problem)
    if path.is_file() and path.suffix == ".safetensors":
        types, problem = _file_facts(path)
        return ControlNetFile(path.stem, path, "single_file", types, _control_type(path.stem), problem)
    return None


class ControlNetCatalog:
    """The ControlNets of one folder, scanned on each listing (a folder holds a few), and the check
    of a request's units. Safe from any thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def files(self) -> list[ControlNetFile]:
        """Every ControlNet in the folder, usable or not."""
        if not self.root.is_dir():
            return []
        with self._lock:
            found = (inspect(path) for path in sorted(self.root.iterdir()))
            return [entry for entry in found if entry is not None]

    def find(self, name: str) -> ControlNetFile | None:
        return next((entry for entry in self.files() if entry.name == name), None)

    def check(self, units: list[tuple[str, str]], field: str = "controlnet") -> None:
        """422 naming the unit when a unit's ControlNet (``(model, control type)``) is unknown or
        unusable, or its control type is not one its model has (a Union model needs one, others none)."""
        entries = {entry.name: entry for entry in self.files()}
        usable = sorted(name for name, entry in entries.items() if entry.problem is None)
        for index, (name, kind) in enumerate(units):
            entry = entries.get(name)
            if entry is None:
                _refuse(f"{field}[{index}].model", f"No ControlNet {name[:100]!r} in CONTROLNET_DIR ({self.root}); "
                                                   f"available: {', '.join(usable) or 'none'} (GET /api/v1/controlnets).")
            elif entry.problem is not None:
                _refuse(f"{field}[{index}].model", f"ControlNet {name!r} cannot be used: {entry.problem}.")
            elif entry.union and kind not in entry.union_types:
                _refuse(f"{field}[{index}].type", f"ControlNet-Union {name!r} needs a control type, one of "
                                                  f"{', '.join(entry.union_types)} (got {kind[:40]!r}).")
            elif not entry.union and kind:
                _refuse(f"{field}[{index}].type", f"Only a ControlNet-Union model takes a control type; {name!r} is not one.")
        kinds = {entry.union for name, _ in units if (entry := entries.get(name)) is not None}
        if len(kinds) > 1:
            _refuse(f"{field}[0].model", "ControlNet-Union models and other ControlNets cannot be mixed in one request.")


def _refuse(where: str, message: str) -> None:
    raise ValidationFailed(f"{where}: {message}", fields={where: [message]})
