"""Output files: ``images/{id}.png`` and ``metadata/{id}.json`` in ``OUTPUT_DIR`` or ``OUTPUT_STORE``.

Each file is written whole or not at all (:mod:`.blobs`), image first and metadata
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
import re
from pathlib import Path
from typing import Any

from dataclasses import dataclass, field

from PIL import Image, PngImagePlugin

from ..errors import StorageFailed
from ..params import CONTROL_MODE_LABELS, CONTROL_RESIZE_LABELS, FLAT_FIELDS, INPUT_ROLES, GenerationParams
from ..sampling import SCHEDULES
from .blobs import Blobs, LocalBlobs
from .inputs import InputStore
from .locking import hold_lock

log = logging.getLogger(__name__)

# A job id (32 hex digits), with "-N" for the N-th image of a batch after the first.
OUTPUT_ID = r"[0-9a-f]{32}(?:-[0-9]{1,3})?"
_OUTPUT_ID_RE = re.compile(rf"^{OUTPUT_ID}$")
LOCK_NAME = ".sdxl-server.lock"
# zlib level 1: for a 1024x1024 photo 3.6x faster than PIL's default 6 for 11% more bytes
# (docs/performance.md, "PNG level"); PNG_COMPRESS_LEVEL chooses another.
DEFAULT_PNG_COMPRESS_LEVEL = 1


# The flat fields each mode uses beyond the core ones (the metadata records only those).
_MODE_FIELDS = {
    "txt2img": (),
    "img2img": ("strength", "resize_mode"),
    "inpaint": ("strength", "resize_mode", "mask_blur", "inpaint_area", "mask_padding", "inpainting_fill"),
    "upscale": ("upscaler", "upscaler_2", "upscaler_2_visibility", "upscale_crop_width", "upscale_crop_height"),
}
_REFINER_FIELDS = {"none": (), "ensemble": ("refiner", "refiner_switch_at"), "image": ("refiner", "refiner_strength")}
_HIRES_FIELDS = tuple(name for name in FLAT_FIELDS if name.startswith("hires"))
_OPTIONAL_FIELDS = {name for names in (*_MODE_FIELDS.values(), *_REFINER_FIELDS.values(), _HIRES_FIELDS) for name in names}


def params_meta(params: GenerationParams) -> dict[str, Any]:
    """The parameters as the metadata records them: the mode, only the options it uses, and each
    input by role as ``{field}_sha256`` (``init_image_sha256``, ``mask_sha256``)."""
    used = {*_MODE_FIELDS[params.mode], *_REFINER_FIELDS[params.refiner.mode], *(_HIRES_FIELDS if params.hires.enabled else ())}
    inputs = {role.field for role in INPUT_ROLES.values()}
    meta = {name: value for name, value in params.to_dict().items()
            if name not in inputs and (name not in _OPTIONAL_FIELDS or name in used)}
    meta["mode"] = params.mode
    for name, group in (("controlnet", params.control), ("ip_adapter", params.ip)):
        if not group.units:
            del meta[name]
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


def _hires_details(meta: dict[str, Any]) -> list[tuple[str, Any]]:
    """A1111's wording for hires fix (its denoise is "Denoising strength" after text to image, as
    A1111 writes it; after image to image, whose strength has that name, "Hires denoising strength")."""
    if not meta.get("hires"):
        return []
    denoise = "Denoising strength" if meta.get("mode", "txt2img") == "txt2img" else "Hires denoising strength"
    details: list[tuple[str, Any]] = [(denoise, meta["hires_denoise"])]
    if meta["hires_width"] or meta["hires_height"]:
        details.append(("Hires resize", f"{meta['hires_width']}x{meta['hires_height']}"))
    else:
        details.append(("Hires upscale", f"{meta['hires_scale']:g}"))
    if meta["hires_steps"]:
        details.append(("Hires steps", meta["hires_steps"]))
    details.append(("Hires upscaler", meta["hires_upscaler"]))
    if meta.get("hires_sampler_name") and meta["hires_sampler_name"] != meta.get("sampler_name"):
        details.append(("Hires sampler", meta["hires_sampler_name"]))
    if meta.get("hires_schedule"):
        details.append(("Hires schedule type", SCHEDULES[meta["hires_schedule"]].label))
    details += [(label, json.dumps(meta[name], ensure_ascii=False)) for label, name in
                (("Hires prompt", "hires_prompt"), ("Hires negative prompt", "hires_negative_prompt")) if meta[name]]
    return details


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


def _control_details(meta: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ControlNet units in the sd-webui-controlnet extension's words (its "ControlNet N" entries)."""
    details = []
    for index, unit in enumerate(meta.get("controlnet") or []):
        parts = [
            ("Module", unit["module"]), ("Model", unit["model"]), ("Weight", f"{unit['weight']:g}"),
            ("Resize Mode", CONTROL_RESIZE_LABELS[unit["resize_mode"]]),
            *([("Processor Res", unit["processor_res"])] if unit.get("processor_res") else []),
            *([("Threshold A", f"{unit['threshold_a']:g}")] if unit.get("threshold_a") is not None else []),
            *([("Threshold B", f"{unit['threshold_b']:g}")] if unit.get("threshold_b") is not None else []),
            *([("Control Type", unit["type"])] if unit.get("type") else []),
            ("Guidance Start", f"{unit['start']:g}"), ("Guidance End", f"{unit['end']:g}"),
            ("Control Mode", CONTROL_MODE_LABELS[unit["control_mode"]]),
        ]
        details.append((f"ControlNet {index}", '"' + ", ".join(f"{k}: {v}" for k, v in parts) + '"'))
    for index, unit in enumerate(meta.get("ip_adapter") or []):
        details.append((f"IP-Adapter {index}", f'"Model: {unit["name"]}, Weight: {unit["weight"]:g}, '
                                               f'Guidance Start: {unit.get("start", 0):g}, Guidance End: {unit.get("end", 1):g}"'))
    return details


def _upscale_text(meta: dict[str, Any]) -> str:
    """An upscale job's parameters in A1111's extras wording."""
    details: list[tuple[str, Any]] = [("Postprocess upscale to", f"{meta['width']}x{meta['height']}"),
                                      ("Postprocess upscaler", meta["upscaler"])]
    if meta.get("upscaler_2", "None") != "None" and meta.get("upscaler_2_visibility"):
        details += [("Postprocess upscaler 2", meta["upscaler_2"]),
                    ("Postprocess upscaler 2 visibility", meta["upscaler_2_visibility"])]
    if meta.get("upscale_crop_width") and meta.get("upscale_crop_height"):
        details.append(("Postprocess crop to", f"{meta['upscale_crop_width']}x{meta['upscale_crop_height']}"))
    details.append(("Upscale image hash", meta.get("upscale_image_sha256")))
    return ", ".join(f"{key}: {value}" for key, value in details)


def parameters_text(meta: dict[str, Any]) -> str:
    """The generation parameters in the common "parameters" text-chunk format (A1111 and others read it)."""
    if meta.get("mode") == "upscale":
        return _upscale_text(meta)
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
        *_control_details(meta),
        *_hires_details(meta),
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
    """Where generated images and their metadata live, and the only code that writes them: on
    local disk (``OUTPUT_DIR``) or in object storage (``OUTPUT_STORE``), by its :class:`~.blobs.Blobs`."""

    def __init__(self, root: Path, png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL, save_inputs: bool = False,
                 blobs: Blobs | None = None) -> None:
        self.root = Path(root)
        self.png_compress_level = png_compress_level
        self.blobs: Blobs = blobs or LocalBlobs(self.root)
        self.images_dir = self.root / "images"
        self.metadata_dir = self.root / "metadata"
        self.inputs = InputStore(self.blobs, keep=save_inputs)
        self._lock: Any = None

    def prepare(self) -> None:
        """Lock the folder (:class:`~.locking.AlreadyInUse` if another server has it), check the
        storage (:class:`~.blobs.StorageUnavailable`), create the folders and remove the temporary
        files an interrupted write left; raise ``OSError``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = hold_lock(
            self.root / LOCK_NAME,
            f"another sdxl-server is already using OUTPUT_DIR {self.root}: stop it, or give this one its own OUTPUT_DIR",
        )
        self.blobs.prepare()

    def close(self) -> None:
        """Let another server have the folder."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @staticmethod
    def is_output_id(value: str) -> bool:
        return bool(_OUTPUT_ID_RE.match(value))

    def image_path(self, output_id: str) -> Path:
        """The image's file on local disk (``OUTPUT_DIR``)."""
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
        each whole or not at all.

        On failure nothing of this output is left behind and :class:`StorageFailed` is raised.
        """
        if not self.is_output_id(output_id):
            raise ValueError(f"not an output id: {output_id!r}")
        body = json.dumps(meta, ensure_ascii=False, indent=2).encode("utf-8")  # fails before any file exists
        png = image if isinstance(image, bytes) else self.encode_png(image, meta)
        try:
            self.blobs.put(f"images/{output_id}.png", png, "image/png")
            self.blobs.put(f"metadata/{output_id}.json", body, "application/json")
        except BaseException as exc:
            with contextlib.suppress(OSError):
                self.blobs.delete([f"images/{output_id}.png"])
            if isinstance(exc, OSError):
                raise StorageFailed(f"could not write the output to {self.blobs.where}: {exc.strerror or exc}") from exc
            raise

    def outputs_of(self, job_id: str) -> list[str]:
        """The keys of every file of a job: its images (``{id}.png``, ``{id}-N.png``) and their metadata."""
        found = []
        for folder, suffix in (("images", ".png"), ("metadata", ".json")):
            found += [f"{folder}/{name}" for name in self.blobs.names(folder, job_id)
                      if name == f"{job_id}{suffix}" or (name.startswith(f"{job_id}-") and name.endswith(suffix))]
        return found

    def scan(self) -> OutputScan:
        """What is stored: each job's readable outputs (an image with its metadata), and the
        files that cannot be matched to one (a missing or unreadable sidecar, not a file)."""
        found = OutputScan()
        images = set(self.blobs.names("images"))
        for name in sorted(images):
            output_id = name.removesuffix(".png")
            if not name.endswith(".png") or not self.is_output_id(output_id):
                continue
            try:
                meta = json.loads(self.blobs.get(f"metadata/{output_id}.json").decode("utf-8"))
                if not isinstance(meta, dict) or meta.get("id") != output_id:
                    raise ValueError("the metadata is not this image's")
                _check_metadata(meta)
            except (OSError, ValueError) as exc:
                found.unmatched.append(f"{name} ({getattr(exc, 'strerror', None) or exc})")
                continue
            found.outputs.setdefault(output_id[:32], []).append(meta)
        for name in self.blobs.names("metadata"):
            output_id = name.removesuffix(".json")
            if self.is_output_id(output_id) and f"{output_id}.png" not in images:
                found.unmatched.append(f"{name} (its image is missing)")
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
        keys = self.outputs_of(job_id)
        self.blobs.delete(keys)
        return len(keys)

    def discard_outputs(self, job_id: str) -> None:
        """Delete what a failed save left of a job, as far as the storage allows (it may be what failed)."""
        try:
            self.remove_outputs(job_id)
        except OSError as exc:
            log.warning("could not delete the partial outputs of job %s from %s: %s", job_id, self.blobs.where, exc)

    def read_image(self, output_id: str) -> bytes:
        """An image's PNG bytes (blocking: call it off the event loop)."""
        return self.blobs.get(f"images/{output_id}.png")

    async def images_base64(self, output_ids: list[str]) -> list[str]:
        """The PNGs, base64-encoded (read off the event loop), for APIs that return images inline."""
        loop = asyncio.get_running_loop()
        blobs = await asyncio.gather(*(loop.run_in_executor(None, self.read_image, i) for i in output_ids))
        return [base64.b64encode(blob).decode("ascii") for blob in blobs]

    def _key(self, folder: str, filename: str) -> str | None:
        """The key of ``/outputs/{folder}/{filename}`` if it is a name the server itself writes."""
        suffix = {"images": ".png", "metadata": ".json"}.get(folder)
        if suffix is None or not filename.endswith(suffix) or not self.is_output_id(filename[: -len(suffix)]):
            return None
        return f"{folder}/{filename}"

    def servable(self, folder: str, filename: str) -> Path | None:
        """The local file to serve for ``/outputs/{folder}/{filename}``, or None.

        Only names the server itself writes are accepted, and the file must be a regular file
        inside ``OUTPUT_DIR`` (no symlinks), so no request can read anything else.
        """
        key = self._key(folder, filename)
        if key is None:
            return None
        path = self.blobs.file(key)
        if path is not None and folder == "metadata" and self.blobs.file(f"images/{filename[:-5]}.png") is None:
            return None  # metadata without its image (deleted outside the server) is never served alone
        return path

    def direct_url(self, folder: str, filename: str) -> str | None:
        """Where a client fetches ``/outputs/{folder}/{filename}`` straight from the storage
        (``OUTPUT_PUBLIC_URL``, or presigned for ``URL_TTL``), or None: this server serves it."""
        key = self._key(folder, filename)
        return None if key is None else self.blobs.url(key)


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
