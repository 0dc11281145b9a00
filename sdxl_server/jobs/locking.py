"""One server per OUTPUT_DIR (and per job database): an exclusive lock file, on every platform.

``filelock`` takes ``fcntl`` locks on POSIX and ``msvcrt`` locks on Windows; the operating system
drops them when the process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from ..config import ConfigError


class AlreadyInUse(ConfigError):
    """Another server (or program) holds the lock; the message says what to do."""


def hold_lock(path: Path, message: str) -> FileLock:
    """Take the lock at ``path`` now or raise :class:`AlreadyInUse` with ``message``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise AlreadyInUse(message) from None
    return lock
