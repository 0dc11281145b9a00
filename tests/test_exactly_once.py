"""Every job ends exactly once, and what a client is told is what the job store says: concurrent
cancels, a job store that cannot be written, a worker that dies, shutdown races, queue admission,
and event fan-out at any queue size."""

from __future__ import annotations

import asyncio
import sqlite3

from doubles import GatedEngine
from test_metrics import scrape
from wsclient import events_until, events_until_terminal

from sdxl_server.api import keys
from sdxl_server.jobs.events import EventHub
from sdxl_server.jobs.housekeeping import recover
from sdxl_server.jobs.outputs import OutputStore
from sdxl_server.jobs.store import JobStore
from sdxl_server.pipeline.engine import Engine


async def _entered(engine) -> None:
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)


async def _until(condition, limit_s: float = 30) -> None:
    """Let the loop run until ``condition()`` holds (a failure, not a hang, if it never does)."""

    async def poll():
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), limit_s)


async def test_concurrent_cancels_of_a_queued_job_end_it_once(make_client, settings):
    client = await make_client(settings, engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    first = await (await client.post("/api/v1/jobs", json={"prompt": "running"})).json()
    await _entered(engine)
    queued = await (await client.post("/api/v1/jobs", json={"prompt": "queued"})).json()
    answers = await asyncio.gather(*(client.delete(f"/api/v1/jobs/{queued['id']}") for _ in range(5)))
    assert sorted(resp.status for resp in answers) == [200, 409, 409, 409, 409]
    engine.gate.set()
    events = await events_until(ws, lambda e: e["type"] == "completed" and e["id"] == first["id"])
    assert [e["type"] for e in events if e["id"] == queued["id"]].count("cancelled") == 1
    assert (await scrape(client))["sdxl_jobs_total{status=cancelled}"] == 1


class BreakableJobStore(JobStore):
    """The real job store, whose writes fail (as with a full disk) while ``broken`` is set."""

    broken = False

    def _save(self, record, deliveries=()):
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        super()._save(record, deliveries)


def _row(settings, job_id):
    with sqlite3.connect(settings.jobs_db_path) as db:
        return db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


async def test_a_job_store_that_cannot_be_written_tells_no_client_anything_it_does_not_say(
    make_client, settings, monkeypatch
):
    monkeypatch.setattr("sdxl_server.api.contexts.JobStore", BreakableJobStore)
    client = await make_client(settings, engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    generating = asyncio.create_task(client.post("/api/v1/generate", json={"prompt": "kept"}))
    await _entered(engine)
    store = client.app[keys.JOB_STORE]
    store.broken = True  # the disk fills up while the job runs
    engine.gate.set()
    await _until(lambda: client.app[keys.QUEUE].problem is not None)  # the worker reaches the "succeeded" write
    health = await client.get("/health")
    assert health.status == 503 and "job store cannot be written" in (await health.json())["queue"]["problem"]
    refused = await client.post("/api/v1/jobs", json={"prompt": "new"})
    assert refused.status == 503 and (await refused.json())["error"] == "job_store_unavailable"
    assert not generating.done()  # nobody was told "succeeded" while the row says "running"
    job_id = (await (await client.get("/api/v1/jobs")).json())["jobs"][0]["id"]
    assert _row(settings, job_id) == "running"
    store.broken = False  # space is freed
    resp = await generating
    assert resp.status == 200 and _row(settings, job_id) == "succeeded"
    assert (await client.get("/health")).status == 200


async def test_a_job_whose_success_was_never_recorded_is_not_run_again(make_client, settings, monkeypatch):
    monkeypatch.setattr("sdxl_server.api.contexts.JobStore", BreakableJobStore)
    settings = settings.replace(shutdown_grace=0)
    client = await make_client(settings, engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    submitted = await (await client.post("/api/v1/jobs", json={"prompt": "once"})).json()
    await _entered(engine)
    client.app[keys.JOB_STORE].broken = True
    engine.gate.set()
    await _until(lambda: client.app[keys.QUEUE].problem is not None)
    client.app[keys.QUEUE].worker.stop_wait_s = 0.5  # the job can never be recorded as ended: do not wait 30 s
    await client.close()  # the server stops (the record says "running"; the images are on disk)
    assert _row(settings, submitted["id"]) == "running"

    runs = []

    class CountingEngine(Engine):
        def generate(self, params, on_step, cancelled, **options):
            runs.append(params.prompt)
            return super().generate(params, on_step, cancelled, **options)

    client = await make_client(settings, engine_factory=CountingEngine)
    job = await (await client.get(f"/api/v1/jobs/{submitted['id']}")).json()
    assert job["status"] == "succeeded" and job["image_url"].endswith(f"{submitted['id']}.png")
    assert runs == [] and _row(settings, submitted["id"]) == "succeeded"


async def test_stop_does_not_hang_while_the_job_store_cannot_be_written(make_client, settings, monkeypatch):
    monkeypatch.setattr("sdxl_server.api.contexts.JobStore", BreakableJobStore)
    client = await make_client(settings.replace(queue_size=3), engine_factory=GatedEngine)
    engine, queue = client.app[keys.ENGINE], client.app[keys.QUEUE]
    await client.post("/api/v1/jobs", json={"prompt": "running"})
    await _entered(engine)
    for n in range(3):
        await client.post("/api/v1/jobs", json={"prompt": f"waiting {n}"})
    client.app[keys.JOB_STORE].broken = True
    queue.worker.stop_wait_s = 0.5
    urgent = asyncio.Event()
    urgent.set()  # Ctrl-C twice
    await asyncio.wait_for(queue.stop(grace_s=600, urgent=urgent), 30)
    engine.gate.set()


async def test_a_retry_of_a_request_that_could_not_be_recorded_is_refused_too(make_client, settings, monkeypatch):
    monkeypatch.setattr("sdxl_server.api.contexts.JobStore", BreakableJobStore)
    client = await make_client(settings)
    client.app[keys.JOB_STORE].broken = True
    headers = {"Idempotency-Key": "same"}
    answers = await asyncio.gather(
        *(client.post("/api/v1/jobs", json={"prompt": "twice"}, headers=headers) for _ in range(2))
    )
    assert [resp.status for resp in answers] == [503, 503]  # no client holds a job that does not exist
    client.app[keys.JOB_STORE].broken = False
    again = await client.post("/api/v1/jobs", json={"prompt": "twice"}, headers=headers)
    assert again.status == 202


async def test_a_worker_crash_during_a_job_ends_that_job_and_the_next_one_runs(make_client, settings):
    client = await make_client(settings)
    queue = client.app[keys.QUEUE]
    announce = queue.announce_positions

    def crash_once():
        queue.announce_positions = announce
        raise RuntimeError("a bug in the worker coroutine")

    queue.announce_positions = crash_once  # runs right after the "started" event
    first = await client.post("/api/v1/generate", json={"prompt": "hit by the bug"})
    assert first.status == 500 and "the worker failed" in (await first.json())["message"]
    second = await client.post("/api/v1/generate", json={"prompt": "after the restart"})
    assert second.status == 200


async def test_one_server_per_job_database(settings, tmp_path):
    from sdxl_server.jobs.locking import AlreadyInUse

    first = JobStore(settings.jobs_db_path)
    await first.open()
    try:
        second = JobStore(settings.jobs_db_path)  # another OUTPUT_DIR, the same JOBS_DB
        try:
            await second.open()
            raise AssertionError("a second server opened the same job database")
        except AlreadyInUse as exc:
            assert "already using the job database" in str(exc)
        finally:
            await second.close()
    finally:
        await first.close()


class FirstLoadCrashes(Engine):
    """A bug outside the pipeline's own errors: the worker coroutine itself fails, once."""

    crashed = False

    def load(self):
        if not FirstLoadCrashes.crashed:
            FirstLoadCrashes.crashed = True
            raise RuntimeError("a bug in the worker")
        super().load()


async def test_the_worker_is_restarted_when_it_dies(make_client, settings):
    client = await make_client(settings, engine_factory=FirstLoadCrashes)
    resp = await client.post("/api/v1/generate", json={"prompt": "still served"})
    assert resp.status == 200
    assert (await client.get("/health")).status == 200


class AlwaysCrashes(Engine):
    def load(self):
        raise RuntimeError("a bug that never goes away")


async def test_a_worker_that_keeps_dying_turns_health_red_and_refuses_jobs(make_client, settings):
    client = await make_client(settings, engine_factory=AlwaysCrashes)
    health = await client.get("/health")
    assert health.status == 503 and "worker stopped" in (await health.json())["queue"]["problem"]
    refused = await client.post("/api/v1/jobs", json={"prompt": "never runs"})
    assert refused.status == 503 and (await refused.json())["error"] == "worker_stopped"


async def test_stop_starts_no_job_while_suspending_the_waiting_ones(make_client, settings):
    client = await make_client(settings.replace(queue_size=3), engine_factory=GatedEngine)
    engine, queue = client.app[keys.ENGINE], client.app[keys.QUEUE]
    started = []
    hub_publish = queue._publish

    def publish(event):
        if event["type"] == "started":
            started.append(event["id"])
        hub_publish(event)

    queue._publish = publish
    first = await (await client.post("/api/v1/jobs", json={"prompt": "running"})).json()
    await _entered(engine)
    for n in range(3):
        await client.post("/api/v1/jobs", json={"prompt": f"waiting {n}"})
    engine.gate.set()  # the running job may finish while stop() suspends the others
    await queue.stop(grace_s=60)
    assert started == [first["id"]]
    statuses = [job["status"] for job in (await (await client.get("/api/v1/jobs")).json())["jobs"]]
    assert sorted(statuses) == ["queued", "queued", "queued", "succeeded"]


async def test_stop_waits_a_bounded_time_for_a_job_that_ignores_cancel(make_client, settings):
    client = await make_client(settings, engine_factory=GatedEngine)
    engine, queue = client.app[keys.ENGINE], client.app[keys.QUEUE]

    def deaf_generate(params, on_step, cancelled, **options):
        engine.entered.release()
        engine.gate.wait(60)  # never looks at cancelled()
        raise RuntimeError("released")

    engine.generate = deaf_generate
    job = await (await client.post("/api/v1/jobs", json={"prompt": "stuck"})).json()
    await _entered(engine)
    queue.worker.stop_wait_s = 0.2
    await queue.stop(grace_s=0)
    assert _row(settings, job["id"]) == "queued"  # suspended: it runs at the next start
    engine.gate.set()


async def test_queue_size_counts_only_the_jobs_waiting_behind_the_running_one(make_client, settings):
    client = await make_client(settings.replace(queue_size=1), engine_factory=GatedEngine)
    burst = await asyncio.gather(*(client.post("/api/v1/jobs", json={"prompt": f"burst {n}"}) for n in range(6)))
    assert sorted(resp.status for resp in burst) == [202, 202, 429, 429, 429, 429]
    client.app[keys.ENGINE].gate.set()


async def test_queue_size_zero_means_no_job_waits(make_client, settings):
    client = await make_client(settings.replace(queue_size=0), engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    first = await client.post("/api/v1/jobs", json={"prompt": "runs at once"})
    assert first.status == 202
    await _entered(engine)
    assert (await client.post("/api/v1/jobs", json={"prompt": "would wait"})).status == 429
    engine.gate.set()


async def test_a_fast_follow_all_client_is_never_dropped_however_many_jobs_wait(make_client, settings):
    client = await make_client(settings.replace(queue_size=400), engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    await client.post("/api/v1/jobs", json={"prompt": "first", "steps": 1})
    await _entered(engine)
    ids = [(await (await client.post("/api/v1/jobs", json={"prompt": f"w{n}", "steps": 1})).json())["id"]
           for n in range(300)]
    engine.gate.set()  # every job runs: the last waiting one moves up 299 places, then ends
    events = await events_until_terminal(ws, ids[-1])
    # A slow reader gets only the latest position of each job (positions are replaced, not queued),
    # so which values it sees depends on its speed; that it sees the last job move up does not.
    moved = [e["position"] for e in events if e["type"] == "position" and e["id"] == ids[-1]]
    assert moved and min(moved) < 299 and events[-1]["type"] == "completed"
    assert not ws.closed


def test_an_event_is_encoded_once_for_all_subscribers():
    hub = EventHub()
    subscriptions = [hub.subscribe() for _ in range(3)]
    hub.publish({"type": "progress", "id": "a", "step": 1})
    messages = [s._pending.popitem()[1] for s in subscriptions]
    assert len({id(m) for m in messages}) == 1
    assert len({id(m.text) for m in messages}) == 1


def test_position_events_never_make_a_client_too_slow():
    hub = EventHub(coalesce_after=8, max_pending=256)
    subscription = hub.subscribe()
    for round_ in range(3):
        for n in range(1000):
            hub.publish({"type": "position", "id": f"job{n}", "position": n + 1 - round_})
    assert not subscription.too_slow and subscription.pending == 1000


async def test_a_requeued_job_is_listed_as_queued(settings):
    store = JobStore(settings.jobs_db_path)
    await store.open()
    try:
        record = {"id": "a" * 32, "status": "running", "params": {"prompt": "p"}, "created_at": 1.0, "attempts": 1,
                  "step": 3, "total_steps": 10}
        await store.save(record)
        outputs = OutputStore(settings.output_dir)
        outputs.prepare()
        report = await recover(store, outputs, "requeue")
        outputs.close()
        assert [r["id"] for r in report.requeued] == ["a" * 32]
        assert (await store.get("a" * 32))["status"] == "queued"
        assert [r["id"] for r in await store.page(10, "queued", None)] == ["a" * 32]
    finally:
        await store.close()
