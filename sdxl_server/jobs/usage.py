"""What each key used, per UTC day: jobs, images and GPU-seconds, counted durably.

Every count is written to the job store (its ``usage`` table, added to as each job runs and
ends) and mirrored here for the days around today, so the daily limits are checked without a
read. Days are UTC dates of the wall clock; a clock that jumps moves to another day's counts and
loses none (the store only adds). The GPU-seconds are measured: the seconds a job held a worker
lane, on the monotonic clock (:meth:`UsageLedger.charge_seconds`). Never imports torch or aiohttp.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .store import JobStore

log = logging.getLogger(__name__)

KEEP_DAYS = 7  # days before today read back at start, should the clock jump back to one of them
ANONYMOUS = ""  # the owner column's value for jobs without an owner


@dataclass
class Usage:
    """One owner's use of one day."""

    jobs: int = 0
    images: int = 0
    gpu_seconds: float = 0.0

    def add(self, jobs: int = 0, images: int = 0, gpu_seconds: float = 0.0) -> None:
        self.jobs += jobs
        self.images += images
        self.gpu_seconds += gpu_seconds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gpu_seconds": round(self.gpu_seconds, 3)}


def utc_day(at: float) -> str:
    """The UTC date of the Unix time ``at``, as ``YYYY-MM-DD``."""
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).date().isoformat()


def next_midnight(at: float) -> float:
    """The Unix time of the UTC midnight after ``at``: when a daily limit resets."""
    day = dt.datetime.fromtimestamp(at, dt.timezone.utc).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()


class UsageLedger:
    """The usage of every owner, by UTC day: durable in ``store``, mirrored in memory."""

    def __init__(self, store: JobStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.clock = clock  # the wall clock: which day it is (tests move it)
        self._days: dict[tuple[str, str], Usage] = {}
        self.listeners: list[Callable[..., None]] = []  # each called as listener(owner, **counts) (the metrics)

    async def load(self) -> None:
        """Read back the recent days' counts (at start; a restart forgets nothing)."""
        since = utc_day(self.clock() - KEEP_DAYS * 86400)
        for row in await self._store.usage(since):
            self._days[(row["owner"], row["day"])] = Usage(row["jobs"], row["images"], row["gpu_seconds"])

    def today(self, owner: str | None) -> Usage:
        """``owner``'s usage of the current UTC day (a copy)."""
        found = self._days.get((owner or ANONYMOUS, utc_day(self.clock())))
        return Usage(**asdict(found)) if found else Usage()

    def today_all(self) -> dict[str | None, Usage]:
        """Every owner's usage of the current UTC day (those with none left out)."""
        day = utc_day(self.clock())
        return {owner or None: usage for (owner, on), usage in self._days.items() if on == day}

    def _add(self, owner: str | None, **counts: Any) -> None:
        key = (owner or ANONYMOUS, utc_day(self.clock()))
        if key not in self._days:  # a new day (or owner): the days long past leave memory
            self.forget_old()
        self._days.setdefault(key, Usage()).add(**counts)
        written = self._store.add_usage_soon(*key, **counts)
        written.add_done_callback(_log_failure)
        for listener in self.listeners:
            listener(owner, **counts)

    def charge_seconds(self, owner: str | None, seconds: float) -> None:
        """``seconds`` of a worker lane used by one of ``owner``'s jobs (counted on today)."""
        if seconds > 0:
            self._add(owner, gpu_seconds=seconds)

    def count_job(self, owner: str | None, images: int) -> None:
        """One of ``owner``'s jobs ended, having made ``images`` images."""
        self._add(owner, jobs=1, images=images)

    async def report(self, owner: str | None = None, days: int = 1, only: bool = False) -> dict[str, Any]:
        """Usage of the last ``days`` UTC days (today included), from the job store, per owner and
        per day: ``owner``'s only (``only``), or every owner's."""
        now = self.clock()
        since = utc_day(now - (days - 1) * 86400)
        rows = await self._store.usage(since, (owner or ANONYMOUS) if only else None)
        keys: dict[str | None, dict[str, Any]] = {owner: {"key": owner, "days": {}}} if only else {}
        for row in rows:
            name = row["owner"] or None
            entry = keys.setdefault(name, {"key": name, "days": {}})
            entry["days"][row["day"]] = Usage(row["jobs"], row["images"], row["gpu_seconds"]).as_dict()
        return {"today": utc_day(now), "resets_at": iso_time(next_midnight(now)), "keys": list(keys.values())}

    def forget_old(self) -> None:
        """Drop the mirrored days long past (the store keeps them)."""
        since = utc_day(self.clock() - KEEP_DAYS * 86400)
        for key in [key for key in self._days if key[1] < since]:
            del self._days[key]


def iso_time(at: float) -> str:
    """A Unix time as an ISO 8601 UTC string (``2026-12-08T00:00:00Z``)."""
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_failure(written: Any) -> None:
    if not written.cancelled() and written.exception() is not None:
        log.error("could not record usage in the job store: %s", written.exception())
