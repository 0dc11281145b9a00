"""The keys of ``KEYS_FILE`` as last read well, and who a presented key is.

The file is read at start (a bad one stops the start, in one line) and again whenever it changes
(its modification time, size or inode: editors that replace the file are seen too), checked
every :data:`POLL_S` seconds off the event loop. A change that cannot be used (malformed, bad
limits, unreadable, gone) keeps the keys of the last good reading; why is logged once and
shown to admin keys on ``/health`` until a good reading replaces it. Never imports torch.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..jobs.owners import UNLIMITED, Limits
from .identity import Identity
from .key_file import KeyEntry, KeyFileError, digest, parse_keys

log = logging.getLogger(__name__)

POLL_S = 1.0
CANDIDATES = 2
# What a digest that is no key's is compared with: revoked, so it never matches (even the digest of "").
_NOBODY = (KeyEntry("", bytes(32), frozenset(), Limits(), revoked=True), Identity(None, frozenset()))
MAX_KEYS_FILE_BYTES = 4 * 1024 * 1024


class KeyRing:
    """``KEYS_FILE``'s keys (``path`` None: no keys file, no named keys)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[bytes, tuple[KeyEntry, Identity]] = {}
        self._limits: dict[str, Limits] = {}  # name -> its limits (revoked keys' too: their jobs may still wait)
        self._webhooks: dict[str, str] = {}  # name -> its default webhook (usable keys that name one)
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self.problem: str | None = None  # why the file as it is now is not in use
        self.loaded_at: float | None = None

    @property
    def in_use(self) -> bool:
        return self.path is not None

    @property
    def names(self) -> list[str]:
        """The names of the keys that may be used (not revoked)."""
        return [entry.name for entry, _ in self._entries.values() if not entry.revoked]

    def load(self) -> None:
        """Read the file at start; raises :class:`KeyFileError` if it cannot be used."""
        if self.path is None:
            return
        stamp, text = self._read()
        self._use(parse_keys(text), stamp)

    def refresh(self) -> bool:
        """Read the file again if it changed (blocking: call it off the event loop); whether the
        keys in use changed. A bad change keeps the last good keys and sets :attr:`problem`."""
        if self.path is None:
            return False
        with self._lock:
            try:
                if self._stat() == self._stamp:
                    return False
                stamp, text = self._read()
                if stamp == self._stamp:
                    return False
                entries = parse_keys(text)
            except KeyFileError as exc:
                told, self.problem = self.problem, str(exc)  # set before it is logged: the log says it is shown
                if told != self.problem:
                    log.error("KEYS_FILE %s: %s; the keys of its last good reading stay in use", self.path, exc)
                return False
            self._use(entries, stamp)
            log.info("KEYS_FILE %s read again: %d key(s) in use", self.path, len(self.names))
            return True

    def _stat(self) -> tuple[int, int, int]:
        assert self.path is not None
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise KeyFileError(f"cannot read it: {exc.strerror or exc}") from None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _read(self) -> tuple[tuple[int, int, int], str]:
        assert self.path is not None
        stamp = self._stat()
        if stamp[1] > MAX_KEYS_FILE_BYTES:
            raise KeyFileError(f"it is {stamp[1]} bytes; at most {MAX_KEYS_FILE_BYTES}")
        try:
            return stamp, self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read it: {exc}") from None

    def _use(self, entries: dict[str, KeyEntry], stamp: tuple[int, int, int]) -> None:
        self._entries = {e.digest: (e, Identity(e.name, e.scopes, e.limits)) for e in entries.values()}  # digests are unique
        self._limits = {e.name: e.limits for e in entries.values()}
        self._webhooks = {e.name: e.webhook for e in entries.values() if e.webhook and not e.revoked}
        self._stamp, self.problem, self.loaded_at = stamp, None, time.time()

    def match(self, presented: Sequence[str]) -> Identity | None:
        """The identity of the first usable key among ``presented`` (at most :data:`CANDIDATES`),
        or None. As many candidates are always hashed (stand-ins for those not sent); each digest
        is looked up (a table of every entry, revoked ones too, keyed by a digest no one can aim
        at without the secret) and compared in constant time with what it found or a stand-in: the
        same work, whether a key is unknown, revoked, malformed or missing, and whatever the
        number of keys."""
        entries = self._entries  # one reading, whatever a reload swaps in meanwhile
        found: Identity | None = None
        for index, key in enumerate(padded(presented)):
            presented_digest = digest(key)
            entry, identity = entries.get(presented_digest, _NOBODY)
            good = hmac.compare_digest(presented_digest, entry.digest) and index < len(presented) and not entry.revoked
            if good and found is None:
                found = identity
        return found

    def limits_of(self, name: str) -> Limits:
        """The limits of the key ``name`` as the file says now (none for a name it lacks)."""
        return self._limits.get(name, UNLIMITED)

    def webhook_of(self, name: str) -> str | None:
        """The key ``name``'s default webhook as the file says now (None: it names none)."""
        return self._webhooks.get(name)

    def describe(self) -> dict[str, object]:
        """For ``/health`` (admin keys): the file, its usable keys, and why a change was refused."""
        return {"file": str(self.path), "keys": len(self.names), "loaded_at": self.loaded_at, "problem": self.problem}


def padded(presented: Sequence[str]) -> tuple[str, ...]:
    """``presented`` and stand-ins up to :data:`CANDIDATES` (the most a request carries: HTTP
    Basic auth's password and its whole ``user:password``), so each request costs the same."""
    return (*presented, *("",) * (CANDIDATES - len(presented)))


async def watch(ring: KeyRing, interval_s: float = POLL_S) -> None:
    """Re-read the keys file whenever it changes, until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(ring.refresh)
