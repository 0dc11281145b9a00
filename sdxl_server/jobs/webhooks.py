"""Which events a job owes its webhook, and what each says: the outbox's letters.

A job's webhook is ``{url, events, base}`` (:func:`webhook_spec`), kept on the job and in the
job store. Each change of state the recorder writes that is an event the webhook asked for
(``queued``, ``started``, ``completed``, ``failed``, ``cancelled``) gets an outbox row in the same
transaction (:meth:`Outbox.letters`); ``progress`` events, which are not recorded, get one at most
every ``WEBHOOK_PROGRESS_INTERVAL`` seconds (:meth:`Outbox.observe`). At start-up
:meth:`Outbox.reconcile` writes the end event of any job that ended without one (recovery
ends jobs too). The payload is a Standard Webhooks envelope, ``{type, timestamp, data}``,
``data`` being the job as ``GET /api/v1/jobs/{id}`` shows it at that moment, with absolute image
URLs. Sending is :mod:`.webhook_delivery`'s. Never imports aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import outbox
from .job import Job
from .states import END_EVENT, JobStatus
from .store import JobStore

log = logging.getLogger(__name__)

EVENTS = ("queued", "started", "progress", "completed", "failed", "cancelled")
DEFAULT_EVENTS = ("completed", "failed", "cancelled")
_URL_FIELDS = ("image_url", "meta_url")

Describe = Callable[[Job], dict[str, Any]]


def webhook_spec(url: str, events: Iterable[str] | None = None, base: str | None = None) -> dict[str, Any]:
    """A job's webhook as the job keeps it: where, which events (default: the job's end), and
    the server's public base URL that makes its image URLs absolute."""
    chosen = set(events) if events is not None else set(DEFAULT_EVENTS)
    return {"url": url, "events": [name for name in EVENTS if name in chosen], "base": base}


def _event_of(before: Job | None, after: Job) -> str | None:
    """The event a recorded change is, if any."""
    if before is None:
        return "queued"
    if after.status is before.status:
        return None
    if after.status is JobStatus.RUNNING:
        return "started"
    if after.status is JobStatus.QUEUED:
        return "queued"  # waiting again (its worker was lost, or a shutdown kept it for the next start)
    return END_EVENT.get(after.status)


def _absolute(body: dict[str, Any], base: str | None) -> dict[str, Any]:
    """``body`` with its relative image and metadata URLs made absolute against ``base``."""
    if not base:
        return body

    def fix(item: dict[str, Any]) -> dict[str, Any]:
        return {
            key: base + value if key in _URL_FIELDS and isinstance(value, str) and value.startswith("/") else value
            for key, value in item.items()
        }

    fixed = fix(body)
    if isinstance(fixed.get("images"), list):
        fixed["images"] = [fix(image) if isinstance(image, dict) else image for image in fixed["images"]]
    return fixed


class Outbox:
    """Makes the outbox rows a job's events owe (see the module's docstring); ``wakeup`` is set
    whenever rows were written, for the dispatcher."""

    def __init__(self, store: JobStore, describe: Describe, *, progress_interval: float,
                 now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._describe = describe
        self._progress_interval = progress_interval
        self._now = now
        self._last_progress: dict[str, float] = {}
        self._writing: set[asyncio.Task] = set()
        self.wakeup = asyncio.Event()

    def rows(self, job: Job, event: str) -> list[dict[str, Any]]:
        """The delivery ``event`` of ``job`` owes (none unless its webhook asked for it)."""
        webhook = job.webhook
        if not webhook or event not in webhook.get("events", ()):
            return []
        now = self._now()
        stamp = datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z")
        payload = {"type": f"job.{event}", "timestamp": stamp, "data": _absolute(self._describe(job), webhook.get("base"))}
        return [{
            "id": f"msg_{uuid.uuid4().hex}", "job_id": job.id, "event": event, "url": webhook["url"],
            "payload": payload, "created_at": now, "next_at": now,
        }]

    def letters(self, before: Job | None, after: Job) -> list[dict[str, Any]]:
        """For the recorder: the rows a change from ``before`` (None: a new job) to ``after`` owes."""
        event = _event_of(before, after)
        if after.status.terminal:
            self._last_progress.pop(after.id, None)
        return self.rows(after, event) if event else []

    def posted(self) -> None:
        """Rows were written: the dispatcher looks again."""
        self.wakeup.set()

    def observe(self, event: dict[str, Any], job: Job | None) -> None:
        """A published event: a ``progress`` one is written as a row, one per interval per job."""
        if event.get("type") != "progress" or job is None or not job.webhook:
            return
        now = self._now()
        last = self._last_progress.get(job.id)
        if last is not None and now - last < self._progress_interval:
            return
        rows = self.rows(job, "progress")
        if rows:
            self._last_progress[job.id] = now
            task = asyncio.get_running_loop().create_task(self._add(rows))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _add(self, rows: list[dict[str, Any]]) -> None:
        try:
            await self._store.run(outbox.add, rows)
        except Exception as exc:  # noqa: BLE001 - a progress webhook is not worth failing anything for
            log.warning("a progress webhook of job %s could not be written: %s", rows[0]["job_id"], exc)
            return
        self.posted()

    async def reconcile(self) -> int:
        """Write the end event of every ended job that has a webhook and none (at start-up, after
        recovery); returns how many were written."""
        ids = await self._store.run(outbox.ended_without_delivery, {s.value: e for s, e in END_EVENT.items()})
        written = 0
        for job_id in ids:
            record = await self._store.get(job_id)
            if record is None:
                continue
            job = Job.from_record(record)
            rows = self.rows(job, END_EVENT[job.status])
            if rows:
                await self._store.run(outbox.add, rows)
                written += 1
        if written:
            log.info("%d webhook end event(s) owed by jobs that ended without one were queued", written)
            self.posted()
        return written

    async def close(self) -> None:
        """Let the progress rows being written finish."""
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)


def shown_url(url: str) -> str:
    """A webhook URL as ``GET /api/v1/jobs/{id}`` shows it: without credentials or query (they
    may hold a receiver's token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


async def delivery_state(store: JobStore, job: Job) -> dict[str, Any]:
    """``job``'s webhook as clients see it: where (``url``, shortened), which ``events``, and each
    delivery so far (id, event, state, attempts, times, the last answer)."""
    webhook = job.webhook or {}
    return {
        "url": shown_url(webhook.get("url", "")), "events": list(webhook.get("events", ())),
        "deliveries": await store.run(outbox.of_job, job.id),
    }
