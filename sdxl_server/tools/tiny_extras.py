"""``python -m sdxl_server.tools.tiny_extras [MODELS]``: the offline demo's ControlNets, IP-Adapter
and annotator models: the project's tiny random-weights ones, written where the server looks by
default (``MODELS/controlnet``, ``MODELS/ip-adapter``, ``MODELS/annotators``; MODELS: ``models``),
so ``MODEL_ID=tiny python -m sdxl_server`` offers ControlNet units, an IP-Adapter and the depth,
pose and segmentation preprocessors with no download. Their images are noise: the plumbing is real.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline.annotator_files import AnnotatorCatalog
from ..pipeline.controlnet_files import ControlNetCatalog
from ..pipeline.ip_adapter_files import IpAdapterCatalog


def write_tiny_extras(models: Path) -> dict[str, list[str]]:
    """The tiny set under ``models``; what each folder now offers, as the server lists it."""
    from ..pipeline.tiny import ensure_tiny_controlnet, ensure_tiny_union_controlnet, write_tiny_ip_adapter
    from ..pipeline.tiny_annotators import write_tiny_annotators

    ensure_tiny_controlnet(models / "controlnet" / "tiny-canny")
    ensure_tiny_union_controlnet(models / "controlnet" / "tiny-union")
    if not (models / "ip-adapter" / "tiny-ip-adapter.safetensors").is_file():
        write_tiny_ip_adapter(models / "ip-adapter")
    write_tiny_annotators(models / "annotators")
    return {
        "controlnet": [entry.name for entry in ControlNetCatalog(models / "controlnet").files() if entry.problem is None],
        "ip-adapter": [entry.name for entry in IpAdapterCatalog(models / "ip-adapter").files() if entry.problem is None],
        "annotators": AnnotatorCatalog(models / "annotators").usable(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxl_server.tools.tiny_extras", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="?", type=Path, default=Path("models"),
                        help="the folder holding controlnet/, ip-adapter/ and annotators/ (default: models)")
    offered = write_tiny_extras(parser.parse_args(argv).models)
    for folder, names in offered.items():
        print(f"{folder}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
