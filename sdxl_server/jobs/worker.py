"""The worker coroutines: take jobs from the queue in order and run each on the executor, supervised
so that a bug in them never leaves jobs waiting forever. One coroutine (a *lane*) per job that may
run at once (``MAX_CONCURRENCY``): one lane on the single thread that owns the local pipeline, or
one per Ray Serve replica (:mod:`.ray_backend`), each lane's thread waiting on its replica.

The thread reports steps back only through ``loop.call_soon_threadsafe``; all job state is
changed on the event loop, through the job's own transitions. A generated job is handed to the
:class:`~.encoder.Encoder` and ends once its files are written, while the next job already runs.
The worker knows the queue only as a :class:`JobSource` (it never imports :mod:`.queue`), so what
it may do to the queue is declared here. Never imports torch or aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import Executor
from typing import Any, Protocol

from ..errors import (
    ApiError,
    GenerationFailed,
    Interrupted,
    JobCancelled,
    JobStoreUnavailable,
    ShuttingDown,
    WorkerStopped,
)
from .encoder import Encoder
from .eta import ThroughputEstimate
from .job import Job, ModelLoading, Save, Work
from .recording import Recorder
from .states import JobStatus

log = logging.getLogger(__name__)

RESTARTS = 3  # the worker is restarted after a failure, up to this many times ...
RESTART_WINDOW_S = 60.0  # ... within this many seconds; then the queue reports it stopped
STOP_WAIT_S = 30.0  # at shutdown, how long a cancelled job may take to reach its next step


class JobSource(Protocol):
    """What the worker needs of the queue (:class:`~.queue.JobQueue`), and no more: jobs to take
    in order, a slot given back, a job's announcements, its recorded changes, and its endings by
    the queue's rules (exactly once)."""

    concurrency: int  # lanes: jobs that may run at once
    wakeup: asyncio.Event  # set when a job may be waiting to be taken
    recorder: Recorder
    estimate: ThroughputEstimate

    def take(self) -> Job | None: ...

    def release(self, job: Job) -> None: ...

    def charge(self, job: Job, seconds: float) -> None: ...

    def announce(self, job: Job, kind: str, **extra: Any) -> None: ...

    def announce_positions(self) -> None: ...

    async def finish(
        self, job: Job, status: JobStatus, *, result: dict | None = None, error: ApiError | None = None
    ) -> None: ...

    async def interrupted(self, job: Job, error: ApiError) -> None: ...

    async def suspend(self, job: Job) -> None: ...

    async def fail_waiting(self, error: ApiError) -> None: ...


class Worker:
    """Runs the source's jobs, ``source.concurrency`` at a time (one per lane)."""

    def __init__(self, source: JobSource, work: Work, executor: Executor, *, preload: bool) -> None:
        self.source = source
        self.work = work
        self._executor = executor
        self.encoder = Encoder()
        self._preload = preload
        self._tasks: dict[int, asyncio.Task] = {}  # lane -> its coroutine
        self._current: dict[int, Job] = {}  # lane -> the job it runs
        self._failures: deque[float] = deque(maxlen=RESTARTS)
        self._stopping = False
        self._cleanup: asyncio.Future | None = None
        self.stop_wait_s = STOP_WAIT_S
        self.problem: str | None = None  # why the worker no longer runs jobs
        self.ready = asyncio.Event()  # set once the preload (if any) has finished, loaded or failed

    # -- supervision ----------------------------------------------------------------------

    def start(self) -> None:
        for lane in range(self.source.concurrency):
            self._start_lane(lane)

    def _start_lane(self, lane: int) -> None:
        task = asyncio.create_task(self._run(lane), name=f"sdxl-queue-worker-{lane}")
        task.add_done_callback(lambda done: self._ended(lane, done))
        self._tasks[lane] = task

    def _ended(self, lane: int, task: asyncio.Task) -> None:
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or self._stopping:
            return
        log.error("the queue's worker stopped unexpectedly", exc_info=exc)
        now = time.monotonic()
        self._failures.append(now)
        if len(self._failures) == RESTARTS and now - self._failures[0] < RESTART_WINDOW_S:
            self.problem = f"the worker stopped {RESTARTS} times in a minute ({exc!r}); restart the server"
            self.ready.set()
            self._cleanup = asyncio.ensure_future(self.source.fail_waiting(WorkerStopped(self.problem)))
            return
        self._start_lane(lane)

    async def _fail(self, job: Job, exc: BaseException) -> None:
        """End the job the worker was running when a bug stopped it (once)."""
        try:
            await self.source.finish(job, JobStatus.FAILED, error=GenerationFailed(f"the worker failed: {exc!r}"))
        except Exception:  # noqa: BLE001 - the job store is failing too: the next start recovers it
            log.exception("could not record job %s as failed", job.id)

    # -- running jobs ---------------------------------------------------------------------

    async def _run(self, lane: int) -> None:
        """Load the model (if preloading; the first lane), then run jobs until cancelled."""
        loop = asyncio.get_running_loop()
        if lane:
            await self.ready.wait()
        elif self._preload:  # at start, and again after a restart
            try:
                await loop.run_in_executor(self._executor, self.work.load)
            except ApiError:
                pass  # recorded by the engine; shown on /health and in each refused request
        self.ready.set()  # (after a bug in the load, only once the restarts succeed or give up)
        while True:
            await self.encoder.room()
            job = self.source.take()
            if job is None:
                self.source.wakeup.clear()
                await self.source.wakeup.wait()
                continue
            self._current[lane] = job
            try:
                await self._run_one(job)
            except Exception as exc:
                await self._fail(job, exc)
                raise  # the supervisor logs it and starts the worker again
            finally:
                self.source.release(job)
                self._current.pop(lane, None)

    async def _run_one(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        started = time.time()
        await self.source.recorder.change(
            job, status=JobStatus.RUNNING, started_at=started, step=0, attempts=job.attempts + 1, error=None
        )  # recorded before anyone is told it started
        job.time_steps_from(started)
        self.source.announce(
            job, "started", position=0, started_at=started, total_steps=job.total_steps,
            queued_s=round(started - job.created_at, 4),
        )
        self.source.announce_positions()
        if job.cancel_requested() and job.cancel_reason is None:
            await self.source.finish(job, JobStatus.CANCELLED)
            return

        def on_step(step: int, total: int, extra: Any = None) -> None:
            # Worker thread: never touch job state here, hand it to the loop (unless it has closed).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_step, job, step, total, time.time(), extra)

        try:
            save = await self._generate(job, on_step)
        except Interrupted as exc:  # its worker was lost (a Ray replica died): the crash rules
            await self.source.interrupted(job, exc)
        except JobCancelled:
            if isinstance(job.cancel_reason, ShuttingDown):
                await self.source.suspend(job)
            else:
                await self.source.finish(job, JobStatus.CANCELLED, error=job.cancel_reason)
        except ApiError as exc:
            await self.source.finish(job, JobStatus.FAILED, error=exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one job must not stop the worker
            log.exception("job %s failed", job.id)
            await self.source.finish(job, JobStatus.FAILED, error=GenerationFailed(f"generation failed: {exc}"))
        else:
            self.source.estimate.record_job(job.params, time.time() - started, job.step)
            self.encoder.track(job, self._save(job, save))  # the next job starts while this one is written

    async def _generate(self, job: Job, on_step: Any) -> Save:
        """Run ``job``'s work on the executor; however it ends, its owner is charged the seconds
        it held the lane (measured on the monotonic clock, which never jumps)."""
        ran_from = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self.work, job, on_step, job.cancel_requested)
        finally:
            self.source.charge(job, time.monotonic() - ran_from)

    async def _save(self, job: Job, save: Save) -> None:
        """End ``job`` once the encoder thread has written its files (or failed to)."""
        try:
            result = await self.encoder.run(save)
        except ApiError as exc:
            outcome: dict[str, Any] = {"error": exc}
        except Exception as exc:  # noqa: BLE001 - an unexpected failure fails this job only
            log.exception("saving job %s failed", job.id)
            outcome = {"error": GenerationFailed(f"saving the images failed: {exc}")}
        else:
            outcome = {"result": result}
        if job.suspended:  # shutdown gave up waiting: recovery adopts the files at the next start
            return
        status = JobStatus.SUCCEEDED if "result" in outcome else JobStatus.FAILED
        with contextlib.suppress(JobStoreUnavailable):  # at shutdown: the job keeps its recorded state
            await self.source.finish(job, status, **outcome)

    def _on_step(self, job: Job, step: int, total: int, at: float, extra: Any) -> None:
        if job.status is not JobStatus.RUNNING or job.settled:
            return
        if isinstance(extra, ModelLoading):
            if extra.seconds is None:
                self.source.announce(job, "loading_model", model=extra.model)
            else:
                self.source.estimate.record_switch(extra.model, extra.seconds)
                job.time_steps_from(at)  # the switch is not a step
            return
        took = job.advance(step, total, at)
        if took is not None:
            self.source.estimate.record_step(job.params, took, step, total)
        eta = self.source.estimate.remaining_seconds(job, at)
        self.source.announce(
            job, "progress", step=step, total_steps=total, progress=job.progress,
            elapsed_s=round(at - (job.started_at or at), 3), eta_s=None if eta is None else round(eta, 2),
        )
        if extra is not None:
            job.preview = extra
            self.source.announce(job, "preview", step=step, image=extra)

    # -- shutdown -------------------------------------------------------------------------

    async def stop(self, grace_s: float, urgent: asyncio.Event | None) -> None:
        """Let the running jobs finish within ``grace_s`` (or until ``urgent`` is set), then
        cancel them at their next step and suspend them; waits at most ``STOP_WAIT_S`` for that
        step, then records them suspended anyway. Then stops the coroutines."""
        self._stopping = True
        running = [job for job in self._current.values() if not job.done]  # in the order they were taken
        tasks = list(self._tasks.values())
        if running:
            await _first_of(grace_s, _all_done(running), *([urgent.wait()] if urgent else []))
            self.source.recorder.give_up()  # from now on a change that cannot be recorded is not made
            running = [job for job in running if not job.done]
            for job in running:
                job.request_cancel(ShuttingDown("the server is shutting down"))  # a client's own cancel stands
            if running:
                await _first_of(self.stop_wait_s, _all_done(running), *tasks)
            for job in running:
                if not job.done:
                    log.warning("job %s did not stop in time; recording it suspended", job.id)
                    with contextlib.suppress(JobStoreUnavailable):
                        await self.source.suspend(job)
        await self.encoder.drain(self.stop_wait_s)  # jobs generated already end once written
        self.encoder.close()
        self.source.recorder.give_up()
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


async def _all_done(jobs: list[Job]) -> None:
    await asyncio.gather(*(job.wait() for job in jobs))


async def _first_of(timeout: float, *awaitables: Any) -> None:
    """Until the first of ``awaitables`` is done, or ``timeout`` seconds."""
    waits = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
