"""Recording a job's changes of state before anyone is told of them.

A change is written to the job store first and applied to the job (and announced) only once the
write has succeeded, so the state a client is told is always the state on disk, before and after
a restart. While the store cannot be written (disk full, file size limit, a locked or damaged
file) the write is retried with a growing pause, the queue reports why on ``/health``, and nothing
moves on; once the store works again everything resumes where it stopped. Never imports aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from typing import Any, Protocol

from ..errors import JobStoreUnavailable
from .job import Job
from .store import JobStore

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0


class Letters(Protocol):
    """What a change of state owes beside its record (the webhook outbox, :mod:`.webhooks`):
    rows written in the same transaction, and a word once they are."""

    def letters(self, before: Job | None, after: Job) -> list[dict[str, Any]]: ...

    def posted(self) -> None: ...


class Recorder:
    """Writes jobs' changes of state, in order, retrying while the job store fails; with
    ``letters``, each change's outbox rows in the same transaction."""

    def __init__(self, store: JobStore, letters: Letters | None = None) -> None:
        self.store = store
        self.letters = letters
        self.problem: str | None = None  # why the store cannot be written now, while it cannot
        self._giving_up = asyncio.Event()  # at shutdown: stop retrying, leave the store as it is

    def give_up(self) -> None:
        """Stop retrying (shutdown): a change that cannot be recorded is not made."""
        self._giving_up.set()

    async def insert(self, job: Job) -> None:
        """A new job, once: a failure refuses the request (nothing was acknowledged yet)."""
        letters = self.letters.letters(None, job) if self.letters else []
        try:
            await self.store.save_soon(job.to_record(), letters)
        except Exception as exc:  # noqa: BLE001 - sqlite3 and OS errors alike
            raise JobStoreUnavailable(f"the job could not be recorded, so it was not queued: {exc}") from exc
        self._posted(letters)

    def _posted(self, letters: list[dict[str, Any]]) -> None:
        if letters and self.letters:
            self.letters.posted()

    async def change(self, job: Job, **changes: Any) -> None:
        """Record ``job`` with ``changes``, then make them. Raises :class:`JobStoreUnavailable`
        only after :meth:`give_up` (shutdown): the job then keeps its recorded state."""
        changed = dataclasses.replace(job, **changes)
        record = changed.to_record()
        letters = self.letters.letters(job, changed) if self.letters else []
        pause = RETRY_FIRST_S
        while True:
            try:
                await self.store.save_soon(record, letters)
                break
            except (sqlite3.OperationalError, OSError) as exc:  # disk full, size limit, locked: may pass
                if self.problem is None:
                    log.error("could not record job %s (%s); retrying until the job store works again", job.id, exc)
                self.problem = f"the job store cannot be written ({exc}): free disk space or fix JOBS_DB"
                if self._giving_up.is_set():
                    raise JobStoreUnavailable(self.problem) from exc
                with contextlib.suppress(asyncio.TimeoutError):  # a pause between retries, cut short by give_up()
                    await asyncio.wait_for(self._giving_up.wait(), pause)
                pause = min(pause * 2, RETRY_MAX_S)
        if self.problem is not None:
            log.warning("the job store works again")
            self.problem = None
        for name, value in changes.items():
            setattr(job, name, value)
        self._posted(letters)
