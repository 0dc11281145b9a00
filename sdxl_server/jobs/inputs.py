"""Input images and masks kept until their job ends: ``OUTPUT_DIR/inputs/{sha256}.png``.

A job's parameters hold only the SHA-256 of its input (the PNG the server runs on, after decoding,
rotation, conversion and resizing), never the bytes, so the job record stays small; the file is
written (atomically) before the job is recorded, so a queued image-to-image job survives a
restart. A request holds the files it stores until its jobs are queued; when neither a request nor a
queued or running job needs a file any more it is deleted, unless ``SAVE_INPUTS`` keeps every input.
Nothing here imports torch or aiohttp.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import InputMissing, StorageFailed
from ..params import INPUT_ROLES, GenerationParams

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".partial-"


def _decoded(sha256: str, body: bytes, mode: str) -> Image.Image:
    """An input's PNG ``body``, checked against its hash, in ``mode``."""
    if hashlib.sha256(body).hexdigest() != sha256:
        raise ValueError(f"the stored input {sha256} is damaged")
    image = Image.open(io.BytesIO(body))
    image.load()
    return image.convert(mode)


class SentInputs:
    """A job's inputs sent along with it (to a Ray replica): read as :class:`InputStore` reads its folder."""

    root = "the job's request"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def get(self, sha256: str, mode: str) -> Image.Image:
        if sha256 not in self.files:
            raise ValueError(f"the input {sha256} was not sent")
        return _decoded(sha256, self.files[sha256], mode)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class InputHold:
    """The inputs one request stored, kept from every sweep until the request lets go of them
    (see :meth:`InputStore.held`): from then on its queued jobs hold them."""

    def __init__(self, store: InputStore) -> None:
        self._store = store
        self.hashes: list[str] = []
        self.open = True

    def put(self, image: Image.Image) -> str:
        """Store ``image`` (see :meth:`InputStore.put`), held by this request; return its SHA-256."""
        return self._store.put(image, self)


class InputStore:
    """The folder of inputs waiting for their jobs, and who still needs each: the active jobs
    (``needed``, set by the job queue) and the requests still storing or queueing theirs (holds).

    A lock makes "is it held?" and "delete it" one step, so an upload whose file is already there
    (stored by an earlier job) cannot lose it to a sweep between finding it and holding it."""

    def __init__(self, root: Path, keep: bool = False) -> None:
        self.root = Path(root)
        self.keep = keep
        self.needed: Callable[[], Iterable[str | None]] = tuple
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f"{_TMP_PREFIX}*"):
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return self.root / f"{sha256}.png"

    def put(self, image: Image.Image, hold: InputHold) -> str:
        """Store ``image`` as PNG (once per content), held by ``hold`` while that is open; return
        its SHA-256. Safe on any thread."""
        body = png_bytes(image)
        sha256 = hashlib.sha256(body).hexdigest()
        path = self.path(sha256)
        with self._lock:
            if hold.open:
                self._held[sha256] += 1
                hold.hashes.append(sha256)
            if path.is_file():
                return sha256
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StorageFailed(f"could not store the input image in {self.root}: {exc.strerror or exc}") from exc
        return sha256

    def get(self, sha256: str, mode: str) -> Image.Image:
        """The stored input, checked against its hash; ``FileNotFoundError`` if it is gone."""
        return _decoded(sha256, self.path(sha256).read_bytes(), mode)

    def files(self, params: GenerationParams) -> dict[str, bytes]:
        """The stored files a job's parameters name, by SHA-256: what a Ray replica is sent
        (:class:`SentInputs`). Raises :class:`InputMissing` when one is gone."""
        try:
            return {sha256: self.path(sha256).read_bytes() for sha256 in params.inputs.values()}
        except OSError as exc:
            raise InputMissing(f"this job's input cannot be read from {self.root}: {exc}; "
                               "submit the job again with the image") from exc

    @contextlib.contextmanager
    def held(self) -> Iterator[InputHold]:
        """A request's hold on the inputs it stores (:meth:`InputHold.put`) until the block ends:
        by then its jobs are queued and hold them; what nothing needs any more is deleted."""
        hold = InputHold(self)
        try:
            yield hold
        finally:
            with self._lock:
                hold.open = False
                self._held.subtract(hold.hashes)
                self._held += Counter()  # drop the zeros
            self.sweep(hold.hashes)

    def sweep(self, only: Iterable[str] | None = None) -> int:
        """Delete every input (or each of ``only``) that neither an active job (``needed``) nor a
        request holds, unless SAVE_INPUTS keeps them; return how many were deleted."""
        if self.keep:
            return 0
        deleted = 0
        with self._lock:
            keep = {h for h in self.needed() if h} | set(self._held)
            paths = self.root.glob("*.png") if only is None else [self.path(h) for h in set(only)]
            for path in paths:
                if path.stem not in keep and path.is_file():
                    with contextlib.suppress(OSError):
                        path.unlink()
                        deleted += 1
        return deleted


def load_inputs(store: InputStore | SentInputs, params: GenerationParams) -> dict[str, Any]:
    """The decoded inputs a job's parameters name, by role, each in its role's image mode (none
    for text to image). Raises :class:`InputMissing` when one is gone (deleted by hand, or a lost disk)."""
    found: dict[str, Any] = {}
    for role, sha256 in params.inputs.items():
        kind = INPUT_ROLES[role]
        try:
            found[role] = store.get(sha256, kind.image_mode)
        except (OSError, ValueError) as exc:
            raise InputMissing(
                f"this job's {kind.field.replace('_', ' ')} ({sha256}) cannot be read from {store.root}: {exc}; "
                "submit the job again with the image"
            ) from exc
    return found
