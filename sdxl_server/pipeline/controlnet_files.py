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
    union: bool
    control_type: str | None
    problem: str | None = None

    def describe(self, root: Path) -> dict[str, Any]:
        return {
            "name": self.name, "file": str(self.path.relative_to(root)), "layout": self.layout,
            "type": "union" if self.union else self.control_type, "union": self.union,
            "control_types": list(UNION_TYPES) if self.union else [], "usable": self.problem is None,
            "problem": self.problem,
        }


def _control_type(name: str) -> str | None:
    lowered = name.lower()
    return next((kind for kind in _TYPES if re.search(rf"(^|[^a-z]){re.escape(kind)}", lowered)), None)


def _folder_facts(path: Path) -> tuple[bool, str | None]:
    """(union, problem) from a diffusers folder's ``config.json``."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return False, f"config.json unreadable: {str(exc)[:200]}"
    if not isinstance(config, dict):
        return False, "config.json is not an object"
    kind = config.get("_class_name")
    if kind not in ("ControlNetModel", "ControlNetUnionModel"):
        return False, f"not a ControlNet (its config.json names {str(kind)[:80]!r})"
    if config.get("addition_embed_type") != "text_time":
        return False, _NOT_SDXL.format(why="no SDXL size-and-crop conditioning: SD 1.x or 2.x")
    return kind == "ControlNetUnionModel", None


def _file_facts(path: Path) -> tuple[bool, str | None]:
    """(union, problem) from a single file's safetensors header."""
    try:
        header = read_header(path)
    except (OSError, ValueError) as exc:
        return False, str(exc)[:200]
    problem = header_problem(header)
    if problem:
        return False, problem
    keys = [key for key in header if key != "__metadata__"]
    if not any("controlnet_cond_embedding" in key or "input_hint_block" in key for key in keys):
        return False, "not a ControlNet (no control-image embedding among its tensors)"
    if not any(key.startswith(("add_embedding.", "control_model.label_emb.", "label_emb.")) for key in keys):
        return False, _NOT_SDXL.format(why="no SDXL size-and-crop conditioning: SD 1.x or 2.x")
    return any("task_embedding" in key for key in keys), None


def inspect(path: Path) -> ControlNetFile | None:
    """What ``path`` (an entry of ``CONTROLNET_DIR``) is; None when it is no candidate at all."""
    if path.name.startswith("."):
        return None
    if path.is_dir() and (path / "config.json").exists():
        union, problem = _folder_facts(path)
        return ControlNetFile(path.name, path, "folder", union, _control_type(path.name), problem)
    if path.is_file() and path.suffix == ".safetensors":
        union, problem = _file_facts(path)
        return ControlNetFile(path.stem, path, "single_file", union, _control_type(path.stem), problem)
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

    def check(self, names: list[str], field: str = "controlnet") -> dict[str, ControlNetFile]:
        """The ControlNets of a request's units, by name; 422 naming the unit when one is unknown or unusable."""
        entries = {entry.name: entry for entry in self.files()}
        usable = sorted(name for name, entry in entries.items() if entry.problem is None)
        for index, name in enumerate(names):
            entry = entries.get(name)
            where = f"{field}[{index}].model"
            if entry is None:
                message = (f"No ControlNet {name[:100]!r} in CONTROLNET_DIR ({self.root}); available: "
                           f"{', '.join(usable) or 'none'} (GET /api/v1/controlnets).")
                raise ValidationFailed(f"{where}: {message}", fields={where: [message]})
            if entry.problem is not None:
                message = f"ControlNet {name!r} cannot be used: {entry.problem}."
                raise ValidationFailed(f"{where}: {message}", fields={where: [message]})
        return {name: entries[name] for name in names}
