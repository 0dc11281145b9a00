"""The IP-Adapters in ``IP_ADAPTER_DIR``: weight files and the CLIP image encoder they share, read
without torch (a safetensors header says whether a file is an IP-Adapter: its ``image_proj.`` and
``ip_adapter.`` tensors). Layout, as h94/IP-Adapter's ``sdxl_models`` folder has it::

    IP_ADAPTER_DIR/ip-adapter_sdxl.safetensors
    IP_ADAPTER_DIR/image_encoder/config.json (+ weights)

The API lists and checks requests with this module; the worker loads them (:mod:`.ip_adapters`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ValidationFailed
from .lora_files import header_problem, read_header

ENCODER_FOLDER = "image_encoder"


@dataclass(frozen=True)
class IpAdapterFile:
    """One IP-Adapter weights file; ``problem`` says why it cannot be used (None: usable)."""

    name: str
    path: Path
    problem: str | None = None

    def describe(self, root: Path) -> dict[str, Any]:
        return {"name": self.name, "file": str(self.path.relative_to(root)), "usable": self.problem is None,
                "problem": self.problem}


def _problem(path: Path, encoder: bool) -> str | None:
    try:
        header = read_header(path)
    except (OSError, ValueError) as exc:
        return str(exc)[:200]
    problem = header_problem(header)
    if problem:
        return problem
    if not any(key.startswith("image_proj.") for key in header) or not any(key.startswith("ip_adapter.") for key in header):
        return "not an IP-Adapter (no image_proj. and ip_adapter. tensors)"
    if not encoder:
        return f"no image encoder: put the CLIP image encoder's folder (config.json and weights) in {ENCODER_FOLDER}/ beside it"
    return None


class IpAdapterCatalog:
    """The IP-Adapters of one folder, scanned on each listing, and the check of a request's units."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self) -> list[IpAdapterFile]:
        if not self.root.is_dir():
            return []
        encoder = (self.root / ENCODER_FOLDER / "config.json").is_file()
        return [IpAdapterFile(path.stem, path, _problem(path, encoder))
                for path in sorted(self.root.glob("*.safetensors")) if not path.name.startswith(".")]

    def check(self, names: list[str], field: str = "ip_adapter") -> None:
        """422 naming the unit when its IP-Adapter is unknown or unusable."""
        entries = {entry.name: entry for entry in self.files()}
        usable = sorted(name for name, entry in entries.items() if entry.problem is None)
        for index, name in enumerate(names):
            entry, where = entries.get(name), f"{field}[{index}].name"
            if entry is None:
                message = (f"No IP-Adapter {name[:100]!r} in IP_ADAPTER_DIR ({self.root}); available: "
                           f"{', '.join(usable) or 'none'} (GET /api/v1/ip-adapters).")
            elif entry.problem is not None:
                message = f"IP-Adapter {name!r} cannot be used: {entry.problem}."
            else:
                continue
            raise ValidationFailed(f"{where}: {message}", fields={where: [message]})
