"""Input images and masks kept until their job ends: ``inputs/{sha256}.png`` in the output store
(``OUTPUT_DIR``, or ``OUTPUT_STORE``'s bucket, so a job queued on one front end survives its restart).

A job's parameters hold only the SHA-256 of its input (the PNG the server runs on, after decoding,
rotation, conversion and resizing), never the bytes, so the job record stays small; the file is
written (whole or not at all) before the job is recorded, so a queued image-to-image job survives a
restart. A request holds the files it stores until its jobs are queued; when neither a request nor a
queued or running job needs a file any more it is deleted, unless ``SAVE_INPUTS`` keeps every input.
Nothing here imports torch or aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from PIL import Image

from ..errors import InputMissing, StorageFailed
from ..params import INPUT_ROLES, GenerationParams
from .blobs import Blobs

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    """The inputs waiting for their jobs (``inputs/`` of the output store's blobs), and who still
    needs each: the active jobs (``needed``, set by the job queue) and the requests still storing or
    queueing theirs (holds).

    A lock makes "is it held?" and "delete it" one step, so an upload whose file is already there
    (stored by an earlier job) cannot lose it to a sweep between finding it and holding it."""

    def __init__(self, blobs: Blobs, keep: bool = False) -> None:
        self.blobs = blobs
        self.root = blobs.where
        self.keep = keep
        self.needed: Callable[[], Iterable[str | None]] = tuple
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sweeping: asyncio.Future | None = None

    @staticmethod
    def key(sha256: str) -> str:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return f"inputs/{sha256}.png"

    def put(self, image: Image.Image, hold: InputHold) -> str:
        """Store ``image`` as PNG (once per content), held by ``hold`` while that is open; return
        its SHA-256. Safe on any thread."""
        body = png_bytes(image)
        sha256 = hashlib.sha256(body).hexdigest()
        key = self.key(sha256)
        with self._lock:
            if hold.open:
                self._held[sha256] += 1
                hold.hashes.append(sha256)
        try:
            if not self.blobs.exists(key):
                self.blobs.put(key, body, "image/png")
        except OSError as exc:
            raise StorageFailed(f"could not store the input image in {self.root}: {exc.strerror or exc}") from exc
        return sha256

    def get(self, sha256: str, mode: str) -> Image.Image:
        """The stored input, checked against its hash; ``FileNotFoundError`` if it is gone."""
        return _decoded(sha256, self.blobs.get(self.key(sha256)), mode)

    def files(self, params: GenerationParams) -> dict[str, bytes]:
        """The stored files a job's parameters name, by SHA-256: what a Ray replica is sent
        (:class:`SentInputs`). Raises :class:`InputMissing` when one is gone."""
        try:
            return {sha256: self.blobs.get(self.key(sha256)) for sha256 in params.inputs.values()}
        except OSError as exc:
            raise InputMissing(f"this job's input cannot be read from {self.root}: {exc}; "
                               "submit the job again with the image") from exc

    @contextlib.contextmanager
    def held(self) -> Iterator[InputHold]:
        """A request's hold on the inputs it stores (:meth:`InputHold.put`) until the block ends:
        by then its jobs are queued and hold them. Sweep ``hold.hashes`` afterwards (off the event
        loop: it may reach the object storage) to delete what nothing needs any more."""
        hold = InputHold(self)
        try:
            yield hold
        finally:
            with self._lock:
                hold.open = False
                self._held.subtract(hold.hashes)
                self._held += Counter()  # drop the zeros

    def sweep_soon(self) -> None:
        """:meth:`sweep` off the event loop (the inputs may be in object storage); :meth:`swept` waits for it."""
        self._sweeping = asyncio.get_running_loop().run_in_executor(None, self.sweep)

    async def swept(self) -> None:
        """Until the last :meth:`sweep_soon` has finished."""
        if self._sweeping is not None:
            await asyncio.shield(self._sweeping)

    def sweep(self, only: Iterable[str] | None = None) -> int:
        """Delete every input (or each of ``only``) that neither an active job (``needed``) nor a
        request holds, unless SAVE_INPUTS keeps them; return how many were deleted."""
        if self.keep:
            return 0
        with self._lock:
            keep = {h for h in self.needed() if h} | set(self._held)
            try:
                names = self.blobs.names("inputs") if only is None else [f"{h}.png" for h in set(only)]
                unused = [f"inputs/{name}" for name in names if name.removesuffix(".png") not in keep
                          and _SHA256.match(name.removesuffix(".png"))]
                self.blobs.delete(unused)
            except OSError as exc:
                log.warning("could not delete unused input images from %s: %s", self.root, exc)
                return 0
        return len(unused)


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
