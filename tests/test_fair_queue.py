"""The fair queue: jobs taken round-robin across owners (weighted), FIFO within an owner, with
positions and ETAs that follow the order jobs really start in; and the limits the queue applies
(jobs running and waiting per owner, images and GPU-seconds per day, models and LoRAs). The real
queue, worker and job store run with the gated stand-in for the worker-thread side."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from test_concurrency import GatedWork, _params, queue_of  # noqa: F401  (queue_of: the fixture)

from sdxl_server.errors import NotAllowed, OverLimit
from sdxl_server.jobs.fair import FairQueue
from sdxl_server.jobs.job import Job
from sdxl_server.jobs.owners import UNLIMITED, Limits


def _job(owner: str | None, prompt: str = "p") -> Job:
    return Job(params=_params(prompt), owner=owner)


def _owners(jobs) -> str:
    return "".join(job.owner or "-" for job in jobs)


def test_one_owners_burst_lets_another_owners_job_go_next():
    fair = FairQueue()
    burst = [_job("A") for _ in range(50)]
    for job in burst:
        fair.append(job)
    assert fair.take() is burst[0]  # A's first job runs
    b = _job("B")
    fair.append(b)
    assert fair.index(b) == 0  # next, before A's 49 others
    assert fair.take() is b
    assert _owners(fair.ordered()) == "A" * 49 and fair.ordered() == burst[1:]  # A's own order kept


def test_owners_alternate_by_weight_and_each_keeps_its_order():
    weights = {"A": 2, "B": 1}
    fair = FairQueue(lambda owner: weights.get(owner, 1))
    jobs = {owner: [_job(owner, f"{owner}{i}") for i in range(6)] for owner in "AB"}
    for a, b in zip(jobs["A"], jobs["B"]):
        fair.append(a), fair.append(b)
    taken = [fair.take() for _ in range(9)]
    order = _owners(taken)
    assert order.startswith("AB") and "BB" not in order and "AAA" not in order
    assert (order.count("A"), order.count("B")) == (6, 3)  # A twice as often while both wait
    for owner in "AB":
        mine = [job for job in taken if job.owner == owner]
        assert mine == jobs[owner][: len(mine)]  # FIFO within an owner


def test_a_cancelled_job_leaves_no_gap_and_an_idle_owner_gains_no_credit():
    fair = FairQueue()
    a = [_job("A") for _ in range(4)]
    for job in a:
        fair.append(job)
    fair.take()
    for job in a[1:3]:
        fair.remove(job)  # A cancels two: its last job moves up
    b = [_job("B") for _ in range(3)]
    for job in b:
        fair.append(job)
    assert _owners(fair.ordered()) == "BABB"  # B first (A ran), A's last at its old place, then B
    for _ in range(4):
        fair.take()
    assert not fair
    c = [_job("C") for _ in range(3)]  # C was idle all along: no backlog of credit
    for job in c:
        fair.append(job)
    late_a = _job("A")
    fair.append(late_a)
    assert fair.index(late_a) <= 1


def test_an_owner_at_its_running_limit_is_skipped_and_an_interrupted_job_goes_first():
    fair = FairQueue()
    a1, a2, b1 = _job("A"), _job("A"), _job("B")
    for job in (a1, a2, b1):
        fair.append(job)
    assert fair.take(blocked={"A"}) is b1
    assert fair.take(blocked={"A", "B"}) is None
    assert fair.take() is a1
    fair.appendleft(a1)  # its worker was lost: it waits first again
    assert fair.ordered()[0] is a1 and fair.index(a2) == 1


async def test_fifty_jobs_of_one_key_delay_another_keys_job_by_at_most_one(queue_of):
    queue, work, events = await queue_of(concurrency=1, capacity=60)
    burst = [(await queue.submit(_params(f"a{i}"), owner="A"))[0] for i in range(50)]
    assert await work.entered.get() == "a0"  # A's first job holds the worker
    b, _ = await queue.submit(_params("b"), owner="B")
    assert queue.position(b) == 1 and queue.position(burst[1]) == 2
    positions = {e["id"]: e["position"] for e in events if e["type"] == "position"}
    assert positions[burst[1].id] == 2 and positions[burst[49].id] == 50  # A's clients were told they moved
    work.opened = True
    for gate in list(work.gates.values()):
        gate.set()
    await asyncio.gather(*(job.wait() for job in [*burst, b]))
    started = [e["id"] for e in events if e["type"] == "started"]
    assert started.index(b.id) <= 1  # after at most one of A's jobs
    assert [i for i in started if i != b.id] == [job.id for job in burst]  # A's in its own order


async def test_eta_follows_the_fair_order(queue_of):
    queue, work, _ = await queue_of(concurrency=1, capacity=10)
    a = [(await queue.submit(_params(f"a{i}"), owner="A"))[0] for i in range(3)]
    await work.entered.get()
    b, _ = await queue.submit(_params("b"), owner="B")
    queue.estimate.record_step(_params("x"), 0.5)  # 2 s a job
    assert [job.id for job, _ in queue.schedule()] == [b.id, a[1].id, a[2].id]
    assert queue.eta_seconds(b) == pytest.approx(4.0, abs=0.05)  # a0's 2 s, then its own
    assert queue.eta_seconds(a[2]) == pytest.approx(8.0, abs=0.05)


async def test_a_key_runs_at_most_its_running_limit(queue_of):
    limits = {"A": Limits(running=1)}
    queue, work, _ = await queue_of(concurrency=2, capacity=10, limits_of=lambda o: limits.get(o, UNLIMITED))
    a1, _ = await queue.submit(_params("a1"), owner="A")
    a2, _ = await queue.submit(_params("a2"), owner="A")
    b1, _ = await queue.submit(_params("b1"), owner="B")
    assert {await work.entered.get(), await work.entered.get()} == {"a1", "b1"}  # a2 waits: A runs one at a time
    assert queue.position(a2) == 1
    work.gate("a1").set()
    await a1.wait()
    assert await work.entered.get() == "a2"


async def test_the_waiting_limit_answers_429_with_when_to_retry(queue_of):
    limits = {"A": Limits(waiting=1)}
    queue, work, _ = await queue_of(concurrency=1, capacity=10, limits_of=lambda o: limits.get(o, UNLIMITED))
    await queue.submit(_params("a1"), owner="A")
    await work.entered.get()
    await queue.submit(_params("a2"), owner="A")  # its one waiting job
    with pytest.raises(OverLimit) as refused:
        await queue.submit(_params("a3"), owner="A")
    assert refused.value.limit == "waiting" and int(refused.value.headers["Retry-After"]) >= 1
    assert refused.value.to_dict()["resets_at"].endswith("Z")
    await queue.submit(_params("b1"), owner="B")  # another key is not held back


async def test_models_and_loras_outside_a_keys_list_are_refused(queue_of):
    limits = {"A": Limits(models=("tiny",), loras=("style",))}
    queue, _, _ = await queue_of(concurrency=1, capacity=10, limits_of=lambda o: limits.get(o, UNLIMITED))
    other_model = dataclasses.replace(_params("x"), model="big")
    with pytest.raises(NotAllowed) as refused:
        await queue.submit(other_model, owner="A")
    assert refused.value.limit == "models" and "model" in refused.value.fields
    with pytest.raises(NotAllowed) as refused:
        await queue.submit(dataclasses.replace(_params("x"), model="tiny", loras=(("other", 1.0),)), owner="A")
    assert refused.value.limit == "loras"
    await queue.submit(dataclasses.replace(_params("x"), model="tiny", loras=(("style", 0.5),)), owner="A")
    await queue.submit(other_model, owner="B")


async def test_positions_and_etas_follow_the_running_limit_when_slots_free(queue_of):
    limits = {"A": Limits(running=1)}
    queue, work, _ = await queue_of(concurrency=2, capacity=10, limits_of=lambda o: limits.get(o, UNLIMITED))
    a1, _ = await queue.submit(_params("a1"), owner="A")
    b1, _ = await queue.submit(_params("b1"), owner="B")
    assert {await work.entered.get(), await work.entered.get()} == {"a1", "b1"}
    a2, _ = await queue.submit(_params("a2"), owner="A")
    b2, _ = await queue.submit(_params("b2"), owner="B")
    assert [job.id for job in queue.active()[2:]] == [a2.id, b2.id]  # the fair order: A's turn first
    queue.estimate.record_step(_params("x"), 0.5)  # 2 s a job
    b1.step = 2  # b1 ends in 1 s, a1 in 2 s
    # b1's slot frees first, but A may run one job at once: b2 takes it, a2 starts when a1 ends
    planned = queue.schedule()
    assert [job.id for job, _ in planned] == [b2.id, a2.id]
    assert [eta for _, eta in planned] == pytest.approx([3.0, 4.0], abs=0.05)
    assert (queue.position(b2), queue.position(a2)) == (1, 2)
    assert queue.eta_seconds(a2) == pytest.approx(4.0, abs=0.05) and queue.eta_seconds(None) == pytest.approx(4.0, abs=0.05)
    work.gate("b1").set()
    await b1.wait()
    assert await work.entered.get() == "b2"  # as planned
