"""MAX_CONCURRENCY jobs at once (BACKEND=ray's replicas): the queue runs that many, and its
admission, positions and ETAs count every slot. Runs the real queue, worker and job store with a
gated stand-in for the worker-thread side (the ``Work`` protocol); no Ray needed."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from sdxl_server.errors import Interrupted, QueueFull
from sdxl_server.jobs.queue import JobQueue
from sdxl_server.jobs.store import JobStore
from sdxl_server.params import GenerationParams


class GatedWork:
    """Each job waits on the worker thread until the test opens its gate (by prompt)."""

    stops_early = False

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.opened = False  # at teardown: every gate, also those not made yet, is open
        self.entered: asyncio.Queue[str] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    def load(self) -> None:
        pass

    def gate(self, prompt: str) -> threading.Event:
        gate = self.gates.setdefault(prompt, threading.Event())
        if self.opened:
            gate.set()
        return gate

    def __call__(self, job, on_step, cancelled):
        self.loop.call_soon_threadsafe(self.entered.put_nowait, job.params.prompt)
        self.gate(job.params.prompt).wait(60)
        on_step(job.params.steps, job.params.steps, None)
        result = {"prompt": job.params.prompt}
        return lambda: result  # what the encoder thread runs to save the job (nothing to write here)


def _params(prompt: str) -> GenerationParams:
    return GenerationParams(prompt=prompt, negative_prompt="", width=64, height=64, steps=4, guidance_scale=1.0, seed=1)


@pytest.fixture
async def queue_of(tmp_path):
    made = []

    async def make(concurrency: int, capacity: int, work=None, **options) -> tuple[JobQueue, GatedWork, list[dict]]:
        store = JobStore(tmp_path / "jobs.sqlite3")
        await store.open()
        work, events = work or GatedWork(), []
        executor = ThreadPoolExecutor(max_workers=concurrency)
        queue = JobQueue(
            work, executor, store, capacity=capacity, publish=events.append, concurrency=concurrency, **options
        )
        queue.start()
        made.append((queue, work, executor, store))
        return queue, work, events

    yield make
    for queue, work, executor, store in made:
        work.opened = True
        for gate in list(work.gates.values()):
            gate.set()
        await queue.stop()
        executor.shutdown(wait=True)
        await store.close()


async def test_two_slots_run_two_jobs_at_once_and_the_third_takes_the_first_free_one(queue_of):
    queue, work, events = await queue_of(concurrency=2, capacity=4)
    first, _ = await queue.submit(_params("one"))
    second, _ = await queue.submit(_params("two"))
    third, _ = await queue.submit(_params("three"))
    assert {await work.entered.get(), await work.entered.get()} == {"one", "two"}  # both on their threads
    assert queue.running_jobs == [first, second] and queue.position(third) == 1
    assert [job.id for job in queue.active()] == [first.id, second.id, third.id]

    work.gate("two").set()
    await second.wait()
    assert await work.entered.get() == "three"  # the freed slot takes the next job while "one" still runs
    assert first.status.value == "running" and queue.position(first) == 0
    work.gate("one").set(), work.gate("three").set()
    await asyncio.gather(first.wait(), third.wait())
    assert [job.status.value for job in (first, second, third)] == ["succeeded"] * 3
    ends = [e["id"] for e in events if e["type"] == "completed"]
    assert sorted(ends) == sorted([first.id, second.id, third.id]) and len(ends) == 3  # each ends once


async def test_admission_counts_every_free_slot(queue_of):
    queue, _, _ = await queue_of(concurrency=2, capacity=1)
    await queue.submit(_params("one"))
    await queue.submit(_params("two"))  # both slots are free: neither waits
    await queue.submit(_params("three"))  # waits behind them: the queue's one place
    with pytest.raises(QueueFull) as refused:
        await queue.submit(_params("four"))
    assert int(refused.value.headers["Retry-After"]) >= 1


async def test_eta_of_a_waiting_job_is_when_the_first_slot_frees_plus_its_own_time(queue_of):
    queue, work, _ = await queue_of(concurrency=2, capacity=4)
    running = [(await queue.submit(_params(p)))[0] for p in ("one", "two")]
    waiting = [(await queue.submit(_params(p)))[0] for p in ("three", "four", "five")]
    await work.entered.get(), await work.entered.get()
    params = _params("any")
    queue.estimate.record_step(params, 0.5)  # 0.5 s per step at this size: 2 s a job
    running[0].step = 2  # half done: 1 s left; the other has all 4 steps (2 s) left
    etas = [queue.eta_seconds(job) for job in waiting]
    assert etas == pytest.approx([3.0, 4.0, 5.0], abs=0.05)  # slot A: 1+2, slot B: 2+2, slot A again: 3+2
    assert queue.eta_seconds(None) == pytest.approx(5.0, abs=0.05)  # when the last slot frees
    assert [e["eta_s"] for e in [queue.event(job, "position") for job in waiting]] == pytest.approx([3.0, 4.0, 5.0], abs=0.05)


class LosesItsWorker(GatedWork):
    """The first ``losses`` starts of each job end as if its Ray replica died mid-job."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses, self.starts = losses, {}

    def __call__(self, job, on_step, cancelled):
        self.starts[job.id] = self.starts.get(job.id, 0) + 1
        if self.starts[job.id] <= self.losses:
            on_step(1, job.params.steps, None)
            raise Interrupted("the Ray replica running this job was lost")
        self.gate(job.params.prompt).set()
        return super().__call__(job, on_step, cancelled)


@pytest.mark.parametrize(
    ("losses", "requeue", "status", "starts"),
    [(1, True, "succeeded", 2), (5, True, "failed", 2), (1, False, "failed", 1)],
    ids=["requeued-then-done", "failed-after-two-starts", "failed-with-restart-running-fail"],
)
async def test_a_job_whose_worker_is_lost_is_requeued_or_failed_once_by_the_crash_rules(
    queue_of, losses, requeue, status, starts
):
    work = LosesItsWorker(losses)
    queue, _, events = await queue_of(concurrency=2, capacity=4, work=work, requeue_interrupted=requeue)
    job, _ = await queue.submit(_params("lost"))
    await job.wait()
    assert job.status.value == status and work.starts[job.id] == starts == job.attempts
    mine = [e for e in events if e["id"] == job.id]
    assert [e["type"] for e in mine if e["type"] in ("completed", "failed", "cancelled")] == [
        "completed" if status == "succeeded" else "failed"]  # one end
    requeued = [e for e in mine if e["type"] == "queued" and "error" in e]
    assert len(requeued) == starts - 1 and all(e["error"]["error"] == "interrupted" for e in requeued)
    if status == "failed":
        assert job.error.code == "interrupted"
