"""Output files: ``OUTPUT_DIR/images/{id}.png`` and ``OUTPUT_DIR/metadata/{id}.json``.

Each file is written beside its final name and renamed into place, image first and metadata
last, so a reader never sees half a file and a metadata file always means its image is whole.
Nothing here imports torch or aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..errors import StorageFailed

log = logging.getLogger(__name__)

# A job id (32 hex digits), with "-N" for the N-th image of a batch after the first.
OUTPUT_ID = r"[0-9a-f]{32}(?:-[0-9]{1,3})?"
_OUTPUT_ID_RE = re.compile(rf"^{OUTPUT_ID}$")
_TMP_PREFIX = ".partial-"


def parameters_text(meta: dict[str, Any]) -> str:
    """The generation parameters in the common "parameters" text-chunk format (A1111 and others read it)."""
    lines = [meta["prompt"]]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    details = [
        ("Steps", meta["steps"]),
        ("Sampler", meta.get("sampler_name") or meta["scheduler"]),
        ("CFG scale", meta["guidance_scale"]),
        ("Seed", meta["seed"]),
        ("Size", f"{meta['width']}x{meta['height']}"),
        ("Model", meta["model_id"]),
    ]
    lines.append(", ".join(f"{key}: {value}" for key, value in details))
    return "\n".join(lines)


class OutputStore:
    """Where generated images and their metadata live, and the only code that writes them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.metadata_dir = self.root / "metadata"

    def prepare(self) -> None:
        """Create the folders and remove temporary files a crash may have left; raise ``OSError``."""
        for folder in (self.images_dir, self.metadata_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(f"{_TMP_PREFIX}*"):
                log.warning("removing a partial file left by an interrupted write: %s", stale)
                stale.unlink(missing_ok=True)

    @staticmethod
    def is_output_id(value: str) -> bool:
        return bool(_OUTPUT_ID_RE.match(value))

    def image_path(self, output_id: str) -> Path:
        return self.images_dir / f"{output_id}.png"

    def metadata_path(self, output_id: str) -> Path:
        return self.metadata_dir / f"{output_id}.json"

    @staticmethod
    def image_url(output_id: str) -> str:
        return f"/outputs/images/{output_id}.png"

    @staticmethod
    def meta_url(output_id: str) -> str:
        return f"/outputs/metadata/{output_id}.json"

    def write_outputs(self, output_id: str, image: Image.Image, meta: dict[str, Any]) -> None:
        """Write the PNG (with its parameters chunk) and then the metadata JSON, each atomically.

        On failure nothing of this output is left behind and :class:`StorageFailed` is raised.
        """
        if not self.is_output_id(output_id):
            raise ValueError(f"not an output id: {output_id!r}")
        chunk = PngImagePlugin.PngInfo()
        chunk.add_text("parameters", parameters_text(meta))
        body = json.dumps(meta, ensure_ascii=False, indent=2).encode("utf-8")  # fails before any file exists
        image_path = self.image_path(output_id)
        try:
            self._write_atomic(image_path, lambda f: image.save(f, format="PNG", pnginfo=chunk))
            self._write_atomic(self.metadata_path(output_id), lambda f: f.write(body))
        except BaseException as exc:
            with contextlib.suppress(OSError):
                image_path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageFailed(f"could not write the output to {self.root}: {exc.strerror or exc}") from exc
            raise

    @staticmethod
    def _write_atomic(path: Path, write) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def outputs_of(self, job_id: str) -> list[Path]:
        """Every file of a job: its images (``{id}.png``, ``{id}-N.png``) and their metadata."""
        found = []
        for folder, suffix in ((self.images_dir, ".png"), (self.metadata_dir, ".json")):
            found += [p for p in (folder / f"{job_id}{suffix}",) if p.exists() or p.is_symlink()]
            found += sorted(folder.glob(f"{job_id}-*{suffix}"))
        return found

    def all_output_ids(self) -> set[str]:
        """The job ids of every output file on disk."""
        ids = set()
        for folder in (self.images_dir, self.metadata_dir):
            for path in folder.iterdir():
                stem = path.name.rsplit(".", 1)[0]
                if self.is_output_id(stem):
                    ids.add(stem[:32])
        return ids

    def remove_outputs(self, job_id: str) -> int:
        """Delete a job's files; return how many there were."""
        paths = self.outputs_of(job_id)
        for path in paths:
            path.unlink(missing_ok=True)
        return len(paths)

    async def images_base64(self, output_ids: list[str]) -> list[str]:
        """The PNGs, base64-encoded (read off the event loop), for APIs that return images inline."""
        loop = asyncio.get_running_loop()
        blobs = await asyncio.gather(*(loop.run_in_executor(None, self.image_path(i).read_bytes) for i in output_ids))
        return [base64.b64encode(blob).decode("ascii") for blob in blobs]

    def servable(self, folder: str, filename: str) -> Path | None:
        """The file to serve for ``/outputs/{folder}/{filename}``, or None.

        Only names the server itself writes are accepted, and the file must be a regular file
        inside ``OUTPUT_DIR`` (no symlinks), so no request can read anything else.
        """
        suffix = {"images": ".png", "metadata": ".json"}.get(folder)
        if suffix is None or not filename.endswith(suffix):
            return None
        output_id = filename[: -len(suffix)]
        if not self.is_output_id(output_id):
            return None
        path = (self.images_dir if folder == "images" else self.metadata_dir) / filename
        try:
            if path.is_symlink() or not path.is_file():
                return None
            if not path.resolve().is_relative_to(self.root.resolve()):
                return None
        except OSError:
            return None
        return path
