"""What a user finds in OUTPUT_DIR's image and metadata folders (the job store lives beside them)."""

from __future__ import annotations

from pathlib import Path


def output_files(output_dir: Path) -> list[str]:
    """``images/...`` and ``metadata/...`` files, sorted, as paths relative to ``output_dir``."""
    return sorted(
        p.relative_to(output_dir).as_posix()
        for folder in ("images", "metadata")
        if (output_dir / folder).is_dir()
        for p in (output_dir / folder).iterdir()
    )


def seed_layout(folder: Path) -> Path:
    """The seed's loose model folder: base, refiner and VAE checkpoints side by side (empty files)."""
    folder.mkdir()
    for name in ("sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors", "sdxl.vae.safetensors"):
        (folder / name).write_bytes(b"")
    return folder
