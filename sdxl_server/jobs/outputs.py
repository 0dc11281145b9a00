"""Output files: ``OUTPUT_DIR/images/{id}.png`` and ``OUTPUT_DIR/metadata/{id}.json``.

Each file is written beside its final name and renamed into place, image first and metadata
last, so a reader never sees half a file and a metadata file always means its image is whole.
The server holds a lock on the folder while it runs (one server per OUTPUT_DIR), and never deletes
a finished image except by retention or an explicit request. Nothing here imports torch or aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from dataclasses import dataclass, field

from PIL import Image, PngImagePlugin

from ..errors import StorageFailed
from ..params import INPUT_ROLES, GenerationParams
from .inputs import InputStore
from .locking import hold_lock

log = logging.getLogger(__name__)

# A job id (32 hex digits), with "-N" for the N-th image of a batch after the first.
OUTPUT_ID = r"[0-9a-f]{32}(?:-[0-9]{1,3})?"
_OUTPUT_ID_RE = re.compile(rf"^{OUTPUT_ID}$")
_TMP_PREFIX = ".partial-"
LOCK_NAME = ".sdxl-server.lock"
# zlib level 1: for a 1024x1024 photo 3.6x faster than PIL's default 6 for 11% more bytes
# (docs/performance.md, "PNG level"); PNG_COMPRESS_LEVEL chooses another.
DEFAULT_PNG_COMPRESS_LEVEL = 1


# The flat fields each mode uses beyond the core ones (the metadata records only those).
_MODE_FIELDS = {
    "txt2img": (),
    "img2img": ("strength", "resize_mode"),
    "inpaint": ("strength", "resize_mode", "mask_blur", "inpaint_area", "mask_padding", "inpainting_fill"),
}
_REFINER_FIELDS = {"none": (), "ensemble": ("refiner", "refiner_switch_at"), "image": ("refiner", "refiner_strength")}
_OPTIONAL_FIELDS = {name for names in (*_MODE_FIELDS.values(), *_REFINER_FIELDS.values()) for name in names}


def params_meta(params: GenerationParams) -> dict[str, Any]:
    """The parameters as the metadata records them: the mode, only the options it uses, and each
    input by role as ``{field}_sha256`` (``init_image_sha256``, ``mask_sha256``)."""
    used = {*_MODE_FIELDS[params.mode], *_REFINER_FIELDS[params.refiner.mode]}
    inputs = {role.field for role in INPUT_ROLES.values()}
    meta = {name: value for name, value in params.to_dict().items()
            if name not in inputs and (name not in _OPTIONAL_FIELDS or name in used)}
    meta["mode"] = params.mode
    for role, sha256 in params.inputs.items():
        meta[f"{INPUT_ROLES[role].field}_sha256"] = sha256
    return meta


def _refiner_details(meta: dict[str, Any]) -> list[tuple[str, Any]]:
    """A1111's wording for the refiner (and ours for its image mode, which A1111 has not)."""
    if meta.get("refiner", "none") == "none":
        return []
    if meta["refiner"] == "ensemble":
        return [("Refiner", meta.get("refiner_id")), ("Refiner switch at", meta["refiner_switch_at"])]
    return [("Refiner", meta.get("refiner_id")), ("Refiner strength", meta["refiner_strength"])]


def _image_details(meta: dict[str, Any]) -> list[tuple[str, Any]]:
    """A1111's wording for image to image and inpainting."""
    if meta.get("mode", "txt2img") == "txt2img":
        return []
    details: list[tuple[str, Any]] = [("Denoising strength", meta["strength"]), ("Init image hash", meta["init_image_sha256"])]
    if meta["mode"] == "inpaint":
        details += [
            ("Mask blur", meta["mask_blur"]),
            ("Mask hash", meta["mask_sha256"]),
            ("Inpaint area", "Only masked" if meta["inpaint_area"] == "masked" else "Whole picture"),
        ]
        if meta["inpaint_area"] == "masked":
            details.append(("Masked area padding", meta["mask_padding"]))
    return details


def parameters_text(meta: dict[str, Any]) -> str:
    """The generation parameters in the common "parameters" text-chunk format (A1111 and others read it)."""
    lines = [meta["prompt"]]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    details = [
        ("Steps", meta["steps"]),
        ("Sampler", meta.get("sampler_name") or meta.get("sampler") or meta.get("scheduler")),
        # As A1111 1.9+ writes it: only when a schedule other than the sampler's own ran.
        *([("Schedule type", meta["schedule_type"])] if meta.get("schedule_type", "Automatic") != "Automatic" else []),
        ("CFG scale", meta["guidance_scale"]),
        ("Seed", meta["seed"]),
        ("Size", f"{meta['width']}x{meta['height']}"),
        ("Model", meta["model_id"]),
        *([("Clip skip", meta["clip_skip"])] if meta.get("clip_skip", 1) != 1 else []),
        *_image_details(meta),
        *_refiner_details(meta),
    ]
    if meta.get("lora_hashes"):  # A1111's form, so its "PNG info" and civitai read the LoRAs back
        details.append(("Lora hashes", '"' + ", ".join(f"{k}: {v}" for k, v in meta["lora_hashes"].items()) + '"'))
    lines.append(", ".join(f"{key}: {value}" for key, value in details))
    return "\n".join(lines)


def encode_png(image: Image.Image, meta: dict[str, Any], level: int = DEFAULT_PNG_COMPRESS_LEVEL) -> bytes:
    """The PNG file of ``image`` with its parameters chunk, at zlib ``level``."""
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", parameters_text(meta))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunk, compress_level=level)
    return buffer.getvalue()


class OutputStore:
    """Where generated images and their metadata live, and the only code that writes them."""

    def __init__(self, root: Path, png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL, save_inputs: bool = False) -> None:
        self.root = Path(root)
        self.png_compress_level = png_compress_level
        self.images_dir = self.root / "images"
        self.metadata_dir = self.root / "metadata"
        self.inputs = InputStore(self.root / "inputs", keep=save_inputs)
        self._lock: Any = None

    def prepare(self) -> None:
        """Lock the folder (:class:`~.locking.AlreadyInUse` if another server has it), create the
        folders and remove the temporary files an interrupted write left; raise ``OSError``."""
        self._lock = hold_lock(
            self.root / LOCK_NAME,
            f"another sdxl-server is already using OUTPUT_DIR {self.root}: stop it, or give this one its own OUTPUT_DIR",
        )
        for folder in (self.images_dir, self.metadata_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(f"{_TMP_PREFIX}*"):
                log.warning("removing a partial file left by an interrupted write: %s", stale)
                stale.unlink(missing_ok=True)
        self.inputs.prepare()

    def close(self) -> None:
        """Let another server have the folder."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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

    def encode_png(self, image: Image.Image, meta: dict[str, Any]) -> bytes:
        """The PNG file of ``image`` with its parameters chunk, at ``png_compress_level``."""
        return encode_png(image, meta, self.png_compress_level)

    def write_outputs(self, output_id: str, image: Image.Image | bytes, meta: dict[str, Any]) -> None:
        """Write the PNG (an image, or :meth:`encode_png`'s bytes) and then the metadata JSON,
        each atomically.

        On failure nothing of this output is left behind and :class:`StorageFailed` is raised.
        """
        if not self.is_output_id(output_id):
            raise ValueError(f"not an output id: {output_id!r}")
        body = json.dumps(meta, ensure_ascii=False, indent=2).encode("utf-8")  # fails before any file exists
        png = image if isinstance(image, bytes) else self.encode_png(image, meta)
        image_path = self.image_path(output_id)
        try:
            self._write_atomic(image_path, lambda f: f.write(png))
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

    def scan(self) -> OutputScan:
        """What is on disk: each job's readable outputs (an image with its metadata), and the
        files that cannot be matched to one (a missing or unreadable sidecar, not a file)."""
        found = OutputScan()
        for image in sorted(self.images_dir.iterdir()):
            output_id = image.name.removesuffix(".png")
            if not image.name.endswith(".png") or not self.is_output_id(output_id):
                continue
            sidecar = self.metadata_path(output_id)
            try:
                if not image.is_file() or image.is_symlink():
                    raise OSError("not a regular file")
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
                if not isinstance(meta, dict) or meta.get("id") != output_id:
                    raise ValueError("the metadata is not this image's")
                _check_metadata(meta)
            except (OSError, ValueError) as exc:
                found.unmatched.append(f"{image.name} ({getattr(exc, 'strerror', None) or exc})")
                continue
            found.outputs.setdefault(output_id[:32], []).append(meta)
        for sidecar in sorted(self.metadata_dir.iterdir()):
            output_id = sidecar.name.removesuffix(".json")
            if self.is_output_id(output_id) and not self.image_path(output_id).exists():
                found.unmatched.append(f"{sidecar.name} (its image is missing)")
        for metas in found.outputs.values():
            metas.sort(key=lambda meta: meta.get("index", 0))
        return found

    def result_of(self, metas: list[dict[str, Any]]) -> dict[str, Any]:
        """A succeeded job's result from its images' metadata (index order): the first image at
        the top level (the seed README's shape) and, for a batch, every image under ``images``."""
        images = [
            {"id": meta["id"], "image_url": self.image_url(meta["id"]), "meta_url": self.meta_url(meta["id"]), "meta": meta}
            for meta in metas
        ]
        first = images[0]
        result = {"image_url": first["image_url"], "meta_url": first["meta_url"], "meta": first["meta"]}
        if len(images) > 1:
            result["images"] = images
        return result

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
            if folder == "metadata" and not self.image_path(output_id).is_file():
                return None  # metadata without its image (deleted outside the server) is never served alone
            if not path.resolve().is_relative_to(self.root.resolve()):
                return None
        except OSError:
            return None
        return path


def _check_metadata(meta: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``meta`` describes a generation this server could have made."""
    try:
        GenerationParams.from_dict(meta)
    except TypeError as exc:
        raise ValueError(f"the metadata lacks the generation's parameters ({exc})") from None
    if not isinstance(meta.get("index", 0), int) or not isinstance(meta.get("timings") or {}, dict):
        raise ValueError("the metadata is not in this server's format")


@dataclass
class OutputScan:
    """:meth:`OutputStore.scan`'s answer."""

    outputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # job id -> its images' metadata
    unmatched: list[str] = field(default_factory=list)  # files left alone, with why

    def complete(self, job_id: str) -> bool:
        """Whether every image of the job is on disk with its metadata."""
        metas = self.outputs.get(job_id)
        return bool(metas) and len(metas) == int(metas[0].get("num_images") or 1)
