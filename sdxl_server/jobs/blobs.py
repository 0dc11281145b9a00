"""Where the output store's bytes live: the ``Blobs`` protocol, and local disk (the default).

Outputs (``images/{id}.png``, ``metadata/{id}.json``) and inputs (``inputs/{sha256}.png``) are
blobs under one key each; :class:`~.outputs.OutputStore` and :class:`~.inputs.InputStore` only
name keys, so the metadata, the PNG chunk, retention, the gallery, recovery and deletes work the
same on local disk and on object storage (``s3_blobs.py``). Every ``put`` is whole or nothing: a
reader never sees half a blob. Nothing here imports torch or aiohttp.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from ..config import ConfigError, Settings

log = logging.getLogger(__name__)

TMP_PREFIX = ".partial-"
FOLDERS = ("images", "metadata", "inputs")


class StorageUnavailable(ConfigError):
    """The output store cannot be used at start-up (unreachable, refused, no such bucket): one line."""


class Blobs(Protocol):
    """Keyed bytes (``folder/name``): what the output and input stores need of a storage."""

    where: str  # for messages: the folder, or s3://bucket/prefix

    def prepare(self) -> None:
        """Check the storage can be used now (:class:`StorageUnavailable` if not); tidy what an
        interrupted write left."""

    def put(self, key: str, body: bytes, content_type: str) -> None:
        """Store ``body`` under ``key``, whole or not at all; ``OSError`` on failure."""

    def get(self, key: str) -> bytes:
        """The blob's bytes; ``FileNotFoundError`` if there is none, ``OSError`` on failure."""

    def exists(self, key: str) -> bool: ...

    def names(self, folder: str, prefix: str = "") -> list[str]:
        """The names in ``folder`` starting with ``prefix``, sorted (only whole blobs: never a
        partial write's, nor on disk a symlink's or a folder's)."""

    def delete(self, keys: list[str]) -> None:
        """Delete each key (those already gone included); ``OSError`` on failure."""

    def url(self, key: str) -> str | None:
        """Where a client can fetch the blob directly (public or presigned), or None: served here."""

    def file(self, key: str) -> Path | None:
        """The local regular file holding the blob (to serve it), or None."""


class LocalBlobs:
    """Blobs as files under ``root`` (``OUTPUT_DIR``): written beside their final name, fsynced and
    renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.where = str(self.root)

    def prepare(self) -> None:
        for folder in FOLDERS:
            path = self.root / folder
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob(f"{TMP_PREFIX}*"):
                log.warning("removing a partial file left by an interrupted write: %s", stale)
                stale.unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self._write_atomic(self.path(key), lambda f: f.write(body))

    @staticmethod
    def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
        write_atomic(path, write)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def names(self, folder: str, prefix: str = "") -> list[str]:
        return sorted(p.name for p in (self.root / folder).glob(f"{prefix}*")
                      if not p.name.startswith(TMP_PREFIX) and not p.is_symlink() and p.is_file())

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self.path(key)
            if path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)

    def url(self, key: str) -> str | None:
        return None

    def file(self, key: str) -> Path | None:
        """Only a regular file inside ``root`` (no symlinks), so no request can read anything else."""
        path = self.path(key)
        with contextlib.suppress(OSError):
            if not path.is_symlink() and path.is_file() and path.resolve().is_relative_to(self.root.resolve()):
                return path
        return None


def blobs_for(settings: Settings) -> Blobs:
    """The storage ``settings`` name: ``OUTPUT_STORE``'s bucket, else ``OUTPUT_DIR``."""
    if not settings.output_store:
        return LocalBlobs(settings.output_dir)
    from .s3_blobs import S3Blobs

    return S3Blobs(settings.output_store, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                   public_url=settings.output_public_url, url_ttl=settings.url_ttl)


def write_atomic(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644, prefix: str = TMP_PREFIX) -> None:
    """Write a file whole or not at all: ``write`` fills a temporary file beside it, which is
    synced, given ``mode`` and renamed over ``path`` (a reader sees the old file or the new one)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
