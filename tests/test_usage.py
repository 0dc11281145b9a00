"""Usage per key per UTC day: measured, durable (the job store's usage table), the daily limits
it feeds, the requests-per-minute window, and clocks that jump."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3

import pytest
from test_concurrency import GatedWork, _params, queue_of  # noqa: F401  (queue_of: the fixture)

from sdxl_server.api.rates import RateWindow
from sdxl_server.errors import OverLimit
from sdxl_server.jobs.owners import UNLIMITED, Limits
from sdxl_server.jobs.store import MIGRATIONS, SCHEMA_VERSION, JobStore
from sdxl_server.jobs.usage import UsageLedger, utc_day

LATE = dt.datetime(2026, 12, 7, 23, 59, 58, tzinfo=dt.timezone.utc).timestamp()  # two seconds to UTC midnight


class Clock:
    """A clock the test sets (and jumps)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_usage_is_counted_per_utc_day_and_survives_reopening(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    clock = Clock(LATE)
    ledger = UsageLedger(store, clock)
    ledger.count_job("alice", images=3)
    ledger.charge_seconds("alice", 1.5)
    ledger.count_job(None, images=1)
    clock.now += 5  # past midnight: a new day
    ledger.count_job("alice", images=2)
    await store.flush()
    await store.close()

    reopened = JobStore(tmp_path / "jobs.sqlite3")
    await reopened.open()
    try:
        again = UsageLedger(reopened, clock)
        await again.load()
        assert again.today("alice").images == 2 and again.today("alice").jobs == 1
        clock.now = LATE  # the clock is set back a day: that day's counts are all there
        assert (again.today("alice").images, again.today("alice").gpu_seconds) == (3, 1.5)
        report = await again.report("alice", days=2, only=True)
        assert report["keys"] == [{"key": "alice", "days": {
            "2026-12-07": {"jobs": 1, "images": 3, "gpu_seconds": 1.5},
            "2026-12-08": {"jobs": 1, "images": 2, "gpu_seconds": 0.0},  # the day the clock was on before
        }}]
        everyone = await again.report(None, days=1)
        assert {entry["key"] for entry in everyone["keys"]} == {"alice", None}
        assert everyone["resets_at"] == "2026-12-08T00:00:00Z"
    finally:
        await reopened.close()


async def test_the_usage_migration_keeps_every_job(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for statement in filter(str.strip, ";".join(MIGRATIONS[: SCHEMA_VERSION - 1]).split(";")):
        db.execute(statement)  # the schema before the usage table
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    db.execute("INSERT INTO jobs (id, status, params, created_at, owner) VALUES ('j1', 'succeeded', '{}', 1.0, 'bob')")
    db.commit()
    db.close()
    store = JobStore(path)
    await store.open()
    try:
        assert (await store.get("j1"))["owner"] == "bob" and await store.count() == 1
        assert await store.usage("2000-01-01") == []
    finally:
        await store.close()


async def test_daily_images_and_gpu_seconds_refuse_until_utc_midnight(queue_of):
    clock = Clock(LATE)
    limits = {"A": Limits(images_per_day=2, gpu_seconds_per_day=3600)}
    queue, work, _ = await queue_of(concurrency=1, capacity=10, limits_of=lambda o: limits.get(o, UNLIMITED))
    ledger = queue.quotas.usage
    ledger.clock = clock
    work.opened = True
    first, _ = await queue.submit(_params("a1"), owner="A")
    second, _ = await queue.submit(_params("a2"), owner="A")  # queued images count too
    with pytest.raises(OverLimit) as refused:
        await queue.submit(_params("a3"), owner="A")
    body = refused.value.to_dict()
    assert body["limit"] == "images_per_day" and body["resets_at"] == "2026-12-08T00:00:00Z"
    assert refused.value.headers["Retry-After"] == "2"
    await asyncio.gather(first.wait(), second.wait())
    used = ledger.today("A")
    assert (used.jobs, used.images) == (2, 2) and used.gpu_seconds > 0  # measured while each ran

    ledger.charge_seconds("A", 3600)  # a long job's GPU-seconds
    limits["A"] = Limits(gpu_seconds_per_day=3600)
    with pytest.raises(OverLimit) as refused:
        await queue.submit(_params("a4"), owner="A")
    assert refused.value.limit == "gpu_seconds_per_day"
    clock.now += 3  # midnight passed: a new day, a new allowance
    job, _ = await queue.submit(_params("a5"), owner="A")
    await job.wait()
    assert utc_day(clock.now) == "2026-12-08" and ledger.today("A").jobs == 1


def test_requests_per_minute_use_the_monotonic_clock_not_the_wall_clock():
    mono, wall = Clock(1000.0), Clock(LATE)
    rates = RateWindow(mono, wall)
    for _ in range(3):
        rates.charge("A", 1, 3)
    wall.now -= 86400 * 30  # the wall clock is set back a month: the window does not care
    with pytest.raises(OverLimit) as refused:
        rates.charge("A", 1, 3)
    assert refused.value.limit == "requests_per_minute" and refused.value.headers["Retry-After"] == "60"
    rates.charge("B", 1, 3)  # another key has its own minute
    mono.now += 30
    wall.now += 86400 * 60  # and forward two months: still nothing changes
    with pytest.raises(OverLimit) as refused:
        rates.charge("A", 1, 3)
    assert refused.value.headers["Retry-After"] == "30"
    mono.now += 30  # a minute after the first three
    rates.charge("A", 1, 3)
