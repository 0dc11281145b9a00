"""The queue: order, positions, cancellation, and the worker coroutine.

One worker coroutine takes jobs in order and runs each on the single executor thread that owns
the pipeline. The thread reports steps back only through ``loop.call_soon_threadsafe``; all job
state is changed on the event loop. Never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from ..errors import (
    ApiError,
    Conflict,
    GenerationFailed,
    IdempotencyConflict,
    JobCancelled,
    NotFound,
    QueueFull,
    ShuttingDown,
    StorageFailed,
)
from ..params import GenerationParams
from .eta import ThroughputEstimate
from .job import Job, Work
from .states import JobStatus
from .store import JobStore

log = logging.getLogger(__name__)


Publish = Callable[[dict[str, Any]], None]


class JobQueue:
    """A bounded FIFO of jobs run one at a time on ``executor`` by :meth:`run`.

    ``capacity`` jobs may wait behind the running one; :meth:`submit` raises :class:`QueueFull`
    beyond that. Finished jobs are remembered (newest ``history`` of them) for lookups.
    """

    def __init__(
        self,
        work: Work,
        executor: Executor,
        store: JobStore,
        *,
        capacity: int,
        history: int = 200,
        publish: Publish | None = None,
        preload: bool = True,
    ) -> None:
        self._work = work
        self._executor = executor
        self._store = store
        self.capacity = capacity
        self._history = history
        self._publish = publish or (lambda event: None)
        self._preload = preload
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # active jobs and the most recent finished ones
        self._by_key: dict[str, Job] = {}
        self._reserved = 0  # submissions being recorded: they count against the capacity
        self._wakeup = asyncio.Event()
        self.running: Job | None = None
        self.accepting = True
        self.estimate = ThroughputEstimate()
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # set once the preload (if any) has finished, loaded or failed

    # -- client side --------------------------------------------------------------

    async def submit(
        self, params: GenerationParams, *, idempotency_key: str | None = None, request_hash: str | None = None
    ) -> tuple[Job, bool]:
        """Queue a job once it is safely in the job store; return it and whether it is a replay.

        The same ``idempotency_key`` with the same ``request_hash`` returns the first job (a
        replay); with another hash it raises :class:`IdempotencyConflict`. Raises
        :class:`QueueFull` (with ``Retry-After``) when ``capacity`` jobs wait already.
        """
        if idempotency_key is not None:
            existing = self._by_key.get(idempotency_key)
            if existing is None:
                record = await self._store.by_idempotency_key(idempotency_key)
                existing = self._by_key.get(idempotency_key) or (
                    self._jobs.get(record["id"]) or Job.from_record(record) if record else None
                )
            if existing is not None:
                if existing.request_hash != request_hash:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used with a different request: use a new key for a new request",
                        fields={"Idempotency-Key": ["Used before with a different body."]},
                    )
                return existing, True
        if not self.accepting:
            raise ShuttingDown("the server is shutting down and accepts no new jobs")
        if len(self._waiting) + self._reserved >= self.capacity:
            wait = self.eta_seconds(None)
            raise QueueFull(
                f"the queue is full ({self.capacity} waiting): retry later",
                headers={"Retry-After": str(max(1, int(wait or 10)))},
            )
        job = Job(params=params, idempotency_key=idempotency_key, request_hash=request_hash)
        if idempotency_key is not None:
            self._by_key[idempotency_key] = job  # a concurrent retry finds it while it is recorded
        self._reserved += 1
        try:
            await self._store.save_soon(job.to_record())  # durable before it is queued or acknowledged
        except Exception as exc:
            self._by_key.pop(idempotency_key or "", None)
            raise StorageFailed(f"the job could not be recorded: {exc}") from exc
        finally:
            self._reserved -= 1
        self._remember(job)
        self._waiting.append(job)
        self._wakeup.set()
        self._publish(self.event(job, "queued"))
        return job, False

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.idempotency_key:
            self._by_key[job.idempotency_key] = job
        while len(self._jobs) > self._history + len(self._waiting) + 1:
            oldest = next((j for j in self._jobs.values() if j.status.terminal), None)
            if oldest is None:
                break
            del self._jobs[oldest.id]
            if oldest.idempotency_key:
                self._by_key.pop(oldest.idempotency_key, None)

    def _persist(self, job: Job, record: dict[str, Any] | None = None) -> asyncio.Future:
        """Record the job's state; the write is queued at once, in order, and may be awaited."""
        saving = self._store.save_soon(record or job.to_record())
        saving.add_done_callback(
            lambda done: done.exception() and log.error("could not record job %s: %s", job.id, done.exception())
        )
        return saving

    async def _change(self, job: Job, **changes: Any) -> None:
        """Record a change of state first, then make it: no client sees a state that a crash
        could take back (a failed write is logged, and the change made all the same)."""
        with contextlib.suppress(Exception):
            await self._persist(job, dataclasses.replace(job, **changes).to_record())
        for name, value in changes.items():
            setattr(job, name, value)

    def forget(self, job_ids: list[str]) -> None:
        """Drop deleted jobs (retention) from memory too."""
        for job_id in job_ids:
            job = self._jobs.pop(job_id, None)
            if job is not None and job.idempotency_key:
                self._by_key.pop(job.idempotency_key, None)

    async def generate(self, params: GenerationParams, **idempotency: Any) -> dict[str, Any]:
        """Submit a job (or find its replay) and wait for it: its result, or its error raised."""
        job, _ = await self.submit(params, **idempotency)
        await job.wait()
        return job.outcome()

    async def find(self, job_id: str) -> Job:
        """Any job this server has accepted, from memory or the job store; raises :class:`NotFound`."""
        job = self._jobs.get(job_id)
        if job is None:
            record = await self._store.get(job_id)
            if record is None:
                raise NotFound(f"no job with id {job_id[:64]!r}")
            job = Job.from_record(record)
        return job

    async def page(self, limit: int, status: JobStatus | None = None, before: int | None = None) -> tuple[list[Job], int | None]:
        """Newest first from the job store, live jobs as they are now; and the cursor of the next page."""
        records = await self._store.page(limit, status.value if status else None, before)
        jobs = [self._jobs.get(r["id"]) or Job.from_record(r) for r in records]
        cursor = records[-1]["seq"] if len(records) == limit else None
        return jobs, cursor

    def active(self) -> list[Job]:
        """The running job, then the waiting ones in order."""
        return ([self.running] if self.running else []) + list(self._waiting)

    async def cancel(self, job_id: str) -> Job:
        """Cancel one job: a queued one leaves the queue now, a running one stops at its next step."""
        job = await self.find(job_id)
        if job.status.terminal:
            raise Conflict(f"job {job_id} already {job.status.value}")
        job._cancel.set()
        if job.status is JobStatus.QUEUED:  # waiting, or suspended by a shutdown in progress
            if job in self._waiting:
                self._waiting.remove(job)
            await self._finish(job, JobStatus.CANCELLED)
            self._announce_positions()
        return job

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 for the running one, None once finished."""
        if job.status is JobStatus.RUNNING:
            return 0
        if job in self._waiting:
            return self._waiting.index(job) + 1
        return None  # finished, or suspended by a shutdown

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def eta_seconds(self, job: Job | None) -> float | None:
        """Seconds until ``job`` finishes (None: until the whole queue drains); None if unknown yet."""
        now = time.time()
        total = 0.0
        if self.running is not None:
            left = self.estimate.remaining_seconds(self.running, now)
            if left is None:
                return None
            total += left
            if job is self.running:
                return total
        for queued in self._waiting:
            seconds = self.estimate.job_seconds(queued.params)
            if seconds is None:
                return None
            total += seconds
            if queued is job:
                return total
        return total

    def event(self, job: Job, kind: str, **extra: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": kind, "id": job.id, "status": job.status.value}
        if kind in ("queued", "position"):
            event["position"] = self.position(job)
            eta = self.eta_seconds(job)
            event["eta_s"] = None if eta is None else round(eta, 2)
        event.update(extra)
        return event

    # -- worker side --------------------------------------------------------------

    async def run(self) -> None:
        """The worker coroutine: load the model (if preloading), then run jobs until cancelled."""
        loop = asyncio.get_running_loop()
        if self._preload:
            try:
                await loop.run_in_executor(self._executor, self._work.load)
            except ApiError:
                pass  # recorded by the engine; shown on /health and in each refused request
        self.ready.set()
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._waiting.popleft()
            await self._run_one(job)

    async def _run_one(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        job.status = JobStatus.RUNNING
        job.started_at = job._step_started = time.time()
        job.step, job.attempts, job.error = 0, job.attempts + 1, None
        self.running = job
        self._persist(job)
        self._publish(
            self.event(
                job, "started", position=0, started_at=job.started_at, total_steps=job.total_steps,
                queued_s=round(job.started_at - job.created_at, 4),
            )
        )
        self._announce_positions()

        def on_step(step: int, total: int, extra: Any = None) -> None:
            # Worker thread: never touch job state here, hand it to the loop.
            loop.call_soon_threadsafe(self._on_step, job, step, total, time.time(), extra)

        try:
            result = await loop.run_in_executor(self._executor, self._work, job, on_step, job.cancel_requested)
        except JobCancelled:
            if isinstance(job.cancel_reason, ShuttingDown):
                await self._suspend(job)
            else:
                await self._finish(job, JobStatus.CANCELLED, error=job.cancel_reason)
        except ApiError as exc:
            await self._finish(job, JobStatus.FAILED, error=exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one job must not stop the worker
            log.exception("job %s failed", job.id)
            await self._finish(job, JobStatus.FAILED, error=GenerationFailed(f"generation failed: {exc}"))
        else:
            self.estimate.record_job(job.params, time.time() - job.started_at, job.step)
            await self._finish(job, JobStatus.SUCCEEDED, result=result)
        finally:
            self.running = None

    def _on_step(self, job: Job, step: int, total: int, at: float, extra: Any) -> None:
        if job.status is not JobStatus.RUNNING:
            return
        if job._step_started is not None and step == job.step + 1 and step > 1:
            self.estimate.record_step(job.params, at - job._step_started)
        job._step_started = at
        job.step, job.total_steps = step, total
        eta = self.estimate.remaining_seconds(job, at)
        self._publish(
            self.event(
                job, "progress", step=step, total_steps=total, progress=job.progress,
                elapsed_s=round(at - (job.started_at or at), 3), eta_s=None if eta is None else round(eta, 2),
            )
        )
        if extra is not None:
            job.preview = extra
            self._publish(self.event(job, "preview", step=step, image=extra))

    async def _finish(
        self, job: Job, status: JobStatus, *, result: dict | None = None, error: ApiError | None = None
    ) -> None:
        await self._change(
            job, status=status, finished_at=time.time(), result=result, error=error, preview=None
        )  # a client told "succeeded" finds it so after any crash
        job._done.set()
        run_s = None if job.started_at is None else round(job.finished_at - job.started_at, 4)
        if status is JobStatus.SUCCEEDED:
            self._publish(self.event(job, "completed", run_s=run_s, **(result or {})))
        elif status is JobStatus.FAILED:
            self._publish(self.event(job, "failed", run_s=run_s, error=error.to_dict() if error else None))
        else:
            reason = {"error": error.to_dict()} if error else {}
            self._publish(self.event(job, "cancelled", run_s=run_s, **reason))

    def _announce_positions(self) -> None:
        for job in self._waiting:
            self._publish(self.event(job, "position"))

    async def _suspend(self, job: Job) -> None:
        """At shutdown: the job stays queued in the job store and runs when the server starts
        again; whoever waits on it now is told so."""
        error = ShuttingDown("the server is shutting down: this job stays queued and runs when the server starts again")
        await self._change(job, status=JobStatus.QUEUED, step=0, preview=None, error=error)
        job._done.set()
        self._publish(self.event(job, "suspended", error=job.error.to_dict()))

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Queue again, in this order, jobs a previous run accepted but did not finish."""
        for record in records:
            job = Job.from_record({**record, "status": JobStatus.QUEUED.value, "step": 0, "error": None})
            self._remember(job)
            self._waiting.append(job)
        if records:
            self._wakeup.set()
            log.info("queued again %d job(s) left by the previous run", len(records))

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the worker coroutine on the running loop."""
        self._task = asyncio.create_task(self.run(), name="sdxl-queue-worker")

    async def stop(self, grace_s: float = 0.0) -> None:
        """Refuse new jobs, cancel the waiting ones, give the running one ``grace_s`` seconds to
        finish, then cancel it at its next step, and stop the worker. Safe to call twice."""
        self.accepting = False
        reason = ShuttingDown("the server is shutting down")
        while self._waiting:
            await self._suspend(self._waiting.popleft())
        running = self.running
        if running is not None:
            if grace_s > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(running.wait()), grace_s)
            if not running.status.terminal:
                if not running.cancel_requested():  # a client's own cancel stands
                    running.cancel_reason = reason
                running._cancel.set()
                await running.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._store.flush()
