"""The queue: admission, order, positions, estimates, cancellation, and how a job ends.

Jobs wait here in order; :class:`~.worker.Worker` runs up to ``concurrency`` of them at once (1
locally; one per replica on Ray). Every change of state
is recorded before it is made or announced (:mod:`.recording`), and every job ends exactly once:
one terminal status, one terminal event. All of it runs on the event loop. Never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from ..errors import (
    ApiError,
    Conflict,
    IdempotencyConflict,
    JobStoreUnavailable,
    NotFound,
    QueueFull,
    ShuttingDown,
    WorkerStopped,
)
from ..params import GenerationParams
from .eta import ThroughputEstimate
from .fair import FairQueue
from .housekeeping import MAX_ATTEMPTS
from .job import Job, Work
from .quotas import LimitsOf, Quotas, no_limits
from .recording import Letters, Recorder
from .states import END_EVENT, JobStatus
from .store import JobStore
from .usage import UsageLedger
from .worker import Worker

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], None]


class JobQueue:
    """A bounded fair queue of jobs (:class:`~.fair.FairQueue`: round-robin across owners, FIFO
    within one), run ``concurrency`` at a time on ``executor`` by its :class:`~.worker.Worker`.
    Each owner's limits (``limits_of``) are applied by :class:`~.quotas.Quotas`, its usage
    counted in ``usage``.

    ``capacity`` jobs may wait behind the running ones (0: a job is accepted only when a slot is free);
    :meth:`submit` raises :class:`QueueFull` beyond that. Finished jobs are remembered (newest
    ``history`` of them) for lookups; older ones are read back from the job store.
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
        concurrency: int = 1,
        requeue_interrupted: bool = True,
        letters: Letters | None = None,
        limits_of: LimitsOf = no_limits,
        usage: UsageLedger | None = None,
    ) -> None:
        self._store = store
        self.recorder = Recorder(store, letters)  # letters: the webhook outbox's rows of each change
        self.capacity = capacity
        self._history = history
        self._publish = publish or (lambda event: None)
        self.quotas = Quotas(usage or UsageLedger(store), limits_of)
        self._waiting = FairQueue(self.quotas.weight)
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # active jobs and the most recent finished ones
        self._by_key: dict[str, Job] = {}
        self._recording: dict[str, asyncio.Future] = {}  # idempotency key -> its first job's insert
        self._reserved = 0  # submissions being recorded: they count against the capacity
        self.wakeup = asyncio.Event()
        self.concurrency = concurrency
        self.requeue_interrupted = requeue_interrupted  # RESTART_RUNNING, for a job whose worker was lost
        self._running: list[Job] = []  # from the moment the worker takes a job, oldest first
        self.accepting = True
        self.estimate = ThroughputEstimate()
        self.worker = Worker(self, work, executor, preload=preload)

    # -- admission -----------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        """Why jobs cannot run now (the job store cannot be written, the worker stopped), or None."""
        return self.recorder.problem or self.worker.problem

    @property
    def ready(self) -> asyncio.Event:
        """Set once the preload (if any) has finished, loaded or failed."""
        return self.worker.ready

    async def submit(
        self, params: GenerationParams, *, idempotency_key: str | None = None, request_hash: str | None = None,
        warnings: tuple[str, ...] = (), owner: str | None = None, webhook: dict[str, Any] | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job once it is safely in the job store; return it and whether it is a replay.

        The same ``idempotency_key`` with the same ``request_hash`` returns the first job (a
        replay); with another hash it raises :class:`IdempotencyConflict`. Raises
        :class:`QueueFull` (with ``Retry-After``) when ``capacity`` jobs would wait.
        """
        if idempotency_key is not None:
            existing = await self._replay(idempotency_key, request_hash)
            if existing is not None:
                return existing, True
        self._check_admission()
        self.quotas.check(owner, params, self)
        job = Job(
            params=params, idempotency_key=idempotency_key, request_hash=request_hash, warnings=warnings, owner=owner,
            webhook=webhook,
        )
        recorded: asyncio.Future = asyncio.get_running_loop().create_future()  # None, or why not
        if idempotency_key is not None:
            self._by_key[idempotency_key] = job  # a concurrent retry finds it, and waits until it is recorded
            self._recording[idempotency_key] = recorded
        self._reserved += 1
        try:
            await self.recorder.insert(job)  # durable before it is queued or acknowledged
        except ApiError as exc:
            self._by_key.pop(idempotency_key or "", None)
            recorded.set_result(exc)
            raise
        else:
            recorded.set_result(None)
        finally:
            self._reserved -= 1
            self._recording.pop(idempotency_key or "", None)
        self._remember(job)
        if not self.accepting:  # the drain began while it was recorded: keep it for the next start
            await self.suspend(job)
            return job, False
        self._waiting.append(job)
        self.wakeup.set()
        self.announce(job, "queued")
        if self._waiting.index(job) < len(self._waiting) - 1:  # it went ahead of other owners' jobs
            self.announce_positions()
        return job, False

    async def _replay(self, key: str, request_hash: str | None) -> Job | None:
        existing = self._by_key.get(key)
        if existing is None:
            record = await self._store.by_idempotency_key(key)
            existing = self._by_key.get(key) or (self._jobs.get(record["id"]) or Job.from_record(record) if record else None)
        if existing is not None and existing.request_hash != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different request: use a new key for a new request",
                fields={"Idempotency-Key": ["Used before with a different body."]},
            )
        if existing is not None and key in self._recording:  # the first request is still being recorded
            failed = await asyncio.shield(self._recording[key])
            if failed is not None:
                raise failed
        return existing

    def _check_admission(self) -> None:
        if not self.accepting:
            raise ShuttingDown("the server is shutting down and accepts no new jobs")
        if self.recorder.problem:
            raise JobStoreUnavailable(self.recorder.problem, headers={"Retry-After": "10"})
        if self.worker.problem:
            raise WorkerStopped(self.worker.problem)
        free = max(0, self.concurrency - len(self._running))  # the worker takes as many at once
        behind_running = len(self._waiting) + self._reserved + 1 - free
        if behind_running > self.capacity:
            wait = self.eta_seconds(None)
            raise QueueFull(
                f"the queue is full ({self.capacity} waiting): retry later",
                headers={"Retry-After": str(max(1, int(wait or 10)))},
            )

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.idempotency_key:
            self._by_key[job.idempotency_key] = job
        while len(self._jobs) > self._history + len(self._waiting) + self.concurrency:
            oldest = next((j for j in self._jobs.values() if j.status.terminal), None)
            if oldest is None:
                break
            del self._jobs[oldest.id]
            if oldest.idempotency_key:
                self._by_key.pop(oldest.idempotency_key, None)

    def forget(self, job_ids: list[str]) -> None:
        """Drop deleted jobs (retention) from memory too."""
        for job_id in job_ids:
            job = self._jobs.pop(job_id, None)
            if job is not None and job.idempotency_key:
                self._by_key.pop(job.idempotency_key, None)

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Queue again, in this order, jobs a previous run accepted but did not finish."""
        for record in records:
            job = Job.from_record({**record, "status": JobStatus.QUEUED.value, "step": 0, "error": None})
            self._remember(job)
            self._waiting.append(job)
        if records:
            self.wakeup.set()
            log.info("queued again %d job(s) left by the previous run", len(records))

    # -- lookups -------------------------------------------------------------------

    async def find(self, job_id: str, owner: str | None = None) -> Job:
        """Any job this server has accepted, from memory or the job store; with ``owner``, only
        one of that owner's (another's is absent: the same :class:`NotFound`)."""
        job = self._jobs.get(job_id)
        if job is None:
            record = await self._store.get(job_id)
            job = None if record is None else Job.from_record(record)
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"no job with id {job_id[:64]!r}")
        return job

    def owner_of(self, job_id: str) -> str | None:
        """The owner of a job in memory (every job with events to publish); None if not known."""
        job = self._jobs.get(job_id)
        return None if job is None else job.owner

    async def page(
        self, limit: int, status: JobStatus | None = None, before: int | None = None, owner: str | None = None,
    ) -> tuple[list[Job], int | None]:
        """Newest first from the job store (``owner``'s only, if given), live jobs as they are now;
        and the cursor of the next page."""
        records = await self._store.page(limit, status.value if status else None, before, owner)
        jobs = [self._jobs.get(r["id"]) or Job.from_record(r) for r in records]
        cursor = records[-1]["seq"] if len(records) == limit else None
        return jobs, cursor

    def active(self) -> list[Job]:
        """The running jobs, then the waiting ones in order."""
        return self.running_jobs + list(self._waiting)

    def unfinished(self) -> list[Job]:
        """Every job that has not ended: running, waiting, and those a shutdown suspended (queued
        in the job store, they run at the next start)."""
        return [job for job in self._jobs.values() if not job.status.terminal]

    @property
    def running(self) -> Job | None:
        """The job running longest (the only one with ``concurrency`` 1), or None."""
        return self._running[0] if self._running else None

    @property
    def running_jobs(self) -> list[Job]:
        """Every running job, oldest first."""
        return list(self._running)

    def take(self) -> Job | None:
        """The next job to run, now a running one (for the worker); None if none waits or no slot is free."""
        if not self._waiting or not self.accepting or len(self._running) >= self.concurrency:
            return None
        job = self._waiting.take(blocked=self.quotas.blocked(self._running))
        if job is not None:
            self._running.append(job)
        return job

    def charge(self, job: Job, seconds: float) -> None:
        """``job`` held a worker lane for ``seconds`` (measured): its owner's GPU-seconds."""
        self.quotas.usage.charge_seconds(job.owner, seconds)

    def release(self, job: Job) -> None:
        """The worker no longer runs ``job`` (it ended, or went back to the queue)."""
        if job in self._running:
            self._running.remove(job)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- cancellation and endings ---------------------------------------------------

    async def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel one job (``owner``'s only, if given: see :meth:`find`): a waiting one leaves the
        queue now, a running one stops at its next step. Raises :class:`Conflict` if it has ended,
        or is being cancelled already."""
        job = await self.find(job_id, owner)
        if job.status.terminal or job.settled:
            raise Conflict(f"job {job_id} already {job.status.value}")
        if job.cancel_requested():
            raise Conflict(f"job {job_id} is being cancelled already")
        if self.worker.encoder.saving(job):
            raise Conflict(f"job {job_id} has been generated and its files are being written")
        job.request_cancel()
        if job not in self._running:  # waiting, or suspended by a shutdown in progress
            if job in self._waiting:
                self._waiting.remove(job)
            try:
                await self.finish(job, JobStatus.CANCELLED)
            except JobStoreUnavailable:
                job.withdraw_cancel()
                raise
            self.announce_positions()
        return job

    def stop_early(self, job: Job) -> bool:
        """A1111's interrupt: the running ``job`` stops denoising at its next step and ends with the
        image of the latents so far. False when it cannot (not running, or its work cannot: a Ray
        replica), so the caller cancels it instead."""
        if job not in self._running or job.settled or not self.worker.work.stops_early:
            return False
        job.request_stop_early()
        return True

    async def finish(
        self, job: Job, status: JobStatus, *, result: dict | None = None, error: ApiError | None = None
    ) -> None:
        """End a job: record its terminal state, then tell its waiters and subscribers, once."""
        if not job.settle(status):
            return  # it ended already, or a shutdown kept it queued (only a client may still cancel it)
        try:
            await self.recorder.change(
                job, status=status, finished_at=time.time(), result=result, error=error, preview=None
            )  # a client told "succeeded" finds it so after any crash
        except JobStoreUnavailable:
            job.unsettle()
            raise
        job.wake()
        if job.attempts:  # it ran: its images count against its owner's day
            self.quotas.usage.count_job(job.owner, len((result or {}).get("images") or ()) or (1 if result else 0))
        run_s = None if job.started_at is None else round(job.finished_at - job.started_at, 4)
        extra: dict[str, Any] = dict(result or {}) if status is JobStatus.SUCCEEDED else {}
        if error is not None:
            extra["error"] = error.to_dict()
        self.announce(job, END_EVENT[status], run_s=run_s, **extra)

    async def interrupted(self, job: Job, error: ApiError) -> None:
        """The worker running ``job`` was lost (a Ray replica died): by the crash rules, it is
        queued again first (``RESTART_RUNNING=requeue``, fewer than ``MAX_ATTEMPTS`` starts) or
        failed. Either way it ends, or waits again, exactly once."""
        if job.settled or job.suspended:
            return
        if not self.accepting:
            await self.suspend(job)
        elif not self.requeue_interrupted or job.attempts >= MAX_ATTEMPTS:
            await self.finish(job, JobStatus.FAILED, error=error)
        else:
            await self.recorder.change(job, status=JobStatus.QUEUED, step=0, preview=None, error=None)
            self.release(job)
            self._waiting.appendleft(job)
            log.warning("job %s queued again (attempt %d was interrupted: %s)", job.id, job.attempts, error.message)
            self.announce(job, "queued", error=error.to_dict())
            self.announce_positions()
            self.wakeup.set()

    async def suspend(self, job: Job) -> None:
        """At shutdown: the job stays queued in the job store and runs when the server starts
        again; whoever waits on it now is told so. A suspension is not an attempt."""
        if not job.suspend():
            return
        error = ShuttingDown("the server is shutting down: this job stays queued and runs when the server starts again")
        if job.status is JobStatus.RUNNING:  # a waiting job's row says queued already: nothing to write
            await self.recorder.change(
                job, status=JobStatus.QUEUED, step=0, preview=None, error=error, attempts=max(0, job.attempts - 1)
            )
        job.error = error
        job.wake()
        self.announce(job, "suspended", error=error.to_dict())

    async def fail_waiting(self, error: ApiError) -> None:
        """The worker cannot run jobs any more: end every waiting one with ``error``."""
        waiting = list(self._waiting)
        self._waiting.clear()
        for job in waiting:
            with contextlib.suppress(JobStoreUnavailable):
                await self.finish(job, JobStatus.FAILED, error=error)

    # -- positions and estimates ----------------------------------------------------

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 for the running one, None once finished."""
        if job.status is JobStatus.RUNNING and (job in self._running or self.worker.encoder.saving(job)):
            return 0
        if job in self._waiting:  # its place in the order jobs will start in (owners' running limits too)
            return next(index for index, (queued, _) in enumerate(self.schedule(), start=1) if queued is job)
        return None  # finished, or suspended by a shutdown

    def schedule(self) -> list[tuple[Job, float | None]]:
        """Each waiting job in order with the seconds until it finishes (None: not known yet),
        in one pass."""
        return self._plan()[0]

    def _plan(self) -> tuple[list[tuple[Job, float | None]], list[float] | None]:
        return self.estimate.plan(self._running, self._waiting, self.concurrency, time.time(), self.quotas.running_limit)

    def eta_seconds(self, job: Job | None) -> float | None:
        """Seconds until ``job`` finishes (None: until the whole queue drains); None if unknown yet."""
        if job is not None and job in self._running:
            return self.estimate.remaining_seconds(job, time.time())
        planned, slots = self._plan()
        if job is None:
            return None if slots is None else max(slots, default=0.0)
        return next((eta for queued, eta in planned if queued is job), None)

    def event(self, job: Job, kind: str, **extra: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": kind, "id": job.id, "status": job.status.value}
        if kind in ("queued", "position"):
            event["position"] = self.position(job)
            eta = self.eta_seconds(job)
            event["eta_s"] = None if eta is None else round(eta, 2)
        event.update(extra)
        return event

    def announce_positions(self) -> None:
        """A ``position`` event for every waiting job (computed in one pass)."""
        for index, (job, eta) in enumerate(self.schedule(), start=1):
            self._publish({
                "type": "position", "id": job.id, "status": job.status.value, "position": index,
                "eta_s": None if eta is None else round(eta, 2),
            })

    def announce(self, job: Job, kind: str, **extra: Any) -> None:
        """Publish ``job``'s ``kind`` event (see :meth:`event`)."""
        self._publish(self.event(job, kind, **extra))

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker on the running loop."""
        self.worker.start()

    async def stop(self, grace_s: float = 0.0, urgent: asyncio.Event | None = None) -> None:
        """Refuse new jobs, suspend the waiting ones, give the running ones ``grace_s`` seconds to
        finish (less if ``urgent`` is set: a second signal), then stop it at its next step, and
        stop the worker. Safe to call twice."""
        self.accepting = False
        waiting = list(self._waiting)
        self._waiting.clear()  # before any await: the worker cannot start one of them meanwhile
        for job in waiting:
            await self.suspend(job)
        await self.worker.stop(grace_s, urgent)
        await self._store.flush()
