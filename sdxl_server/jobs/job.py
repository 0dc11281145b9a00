"""One job: its parameters, its state, its transitions, and what a waiting client gets when it ends.

A job is changed only on the event loop, and only through its own methods (the queue and the
worker ask, the job keeps its flags consistent); the worker thread reads ``id``, ``params`` and
``created_at`` and polls :meth:`Job.cancel_requested`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ApiError, GenerationFailed, JobCancelled, StoredError
from ..params import GenerationParams
from .states import JobStatus

@dataclass(frozen=True)
class ModelLoading:
    """Passed as a step report's extra while a job's model loads (``seconds`` None) and once it
    has (``seconds``: how long the switch took); the worker turns it into a ``loading_model``
    event and an ETA figure."""

    model: str
    seconds: float | None = None


StepReporter = Callable[[int, int, Any], None]
Save = Callable[[], dict[str, Any]]
"""Writes a generated job's files (on the encoder thread) and returns the job's result."""


class Work(Protocol):
    """The worker-thread side of a job (see :mod:`sdxl_server.jobs.work`): generating returns
    the :data:`Save` that the encoder thread runs while the worker thread starts the next job."""

    stops_early: bool
    """Whether a job asked to stop early (A1111's interrupt) ends with the image so far; where it
    cannot (a Ray replica), the job is cancelled instead."""

    def load(self) -> None: ...

    def __call__(self, job: Job, on_step: StepReporter, cancelled: Callable[[], bool]) -> Save: ...


@dataclass(eq=False)
class Job:
    """One request's life. Changed only on the event loop, its private flags only by its own
    transitions (below); the worker thread reads ``id``, ``params`` and ``created_at`` and polls
    :meth:`cancel_requested`."""

    params: GenerationParams
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    result: dict[str, Any] | None = None
    error: ApiError | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    attempts: int = 0  # starts so far, counting any interrupted by a crash
    cancel_reason: ApiError | None = None  # why it was cancelled, when not by a client's DELETE
    # What the request asked for and did not get (A1111's unapplied fields), for the images' metadata;
    # not in the job store: a job recovered after a crash is made without them in its metadata.
    warnings: tuple[str, ...] = ()
    # Who submitted it: the name of the caller's key (``Identity.name``); None for an anonymous
    # caller, the one ``API_KEY`` and jobs from before keys (the admin's).
    owner: str | None = None
    # Where its events are delivered: ``{url, events, base}`` (:mod:`.webhooks`), or None.
    webhook: dict[str, Any] | None = None
    preview: str | None = field(default=None, repr=False)  # the latest preview (a JPEG data URL), if any was made
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop_early: threading.Event = field(default_factory=threading.Event, repr=False)  # A1111's interrupt
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _step_started: float | None = field(default=None, repr=False)
    _settled: bool = field(default=False, repr=False)  # it has ended (or is ending): no second end event
    _suspended: bool = field(default=False, repr=False)  # kept queued by a shutdown: it may still be cancelled

    def __post_init__(self) -> None:
        self.total_steps = self.total_steps or self.params.total_steps

    # -- what others may ask --------------------------------------------------------------

    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def stop_early_requested(self) -> bool:
        """Whether the job should stop denoising and make its image from the latents so far."""
        return self._stop_early.is_set()

    @property
    def settled(self) -> bool:
        """It has ended, or its ending is being recorded: it gets no second end."""
        return self._settled

    @property
    def suspended(self) -> bool:
        """A shutdown kept it queued for the next start: only a client's cancel may still end it."""
        return self._suspended

    @property
    def done(self) -> bool:
        """Its waiters have been told: it ended, or a shutdown suspended it."""
        return self._done.is_set()

    # -- transitions (on the event loop) ---------------------------------------------------

    def request_cancel(self, reason: ApiError | None = None) -> None:
        """Ask it to stop at its next step. ``reason``: why, when it is not a client's cancel; a
        cancel asked for already keeps its own (a client's cancel stands over a shutdown's)."""
        if reason is not None and not self._cancel.is_set():
            self.cancel_reason = reason
        self._cancel.set()

    def withdraw_cancel(self) -> None:
        """The cancel of a waiting job could not be recorded: it waits on, not cancelled."""
        self._cancel.clear()

    def request_stop_early(self) -> None:
        """A1111's interrupt: stop denoising at the next step and make the image from the latents so far."""
        self._stop_early.set()

    def time_steps_from(self, at: float) -> None:
        """The next step is timed from ``at``: the job's start, or the end of a model switch
        (neither is a step)."""
        self._step_started = at

    def advance(self, step: int, total: int, at: float) -> float | None:
        """Step ``step`` of ``total`` ended at ``at``. Returns how long it took when that is a
        step's time: it follows the one before (the first also encoded the prompt)."""
        started = self._step_started
        took = at - started if started is not None and step == self.step + 1 and step > 1 else None
        self._step_started = at
        self.step, self.total_steps = step, total
        return took

    def settle(self, status: JobStatus) -> bool:
        """Take the job's one ending (before the ending's first await, so a concurrent ending
        finds it taken). False when it ended already, or a shutdown kept it queued and ``status``
        is not a client's cancel."""
        if self._settled or (self._suspended and status is not JobStatus.CANCELLED):
            return False
        self._settled = True
        return True

    def unsettle(self) -> None:
        """Its ending could not be recorded: it has not ended, and may end later."""
        self._settled = False

    def suspend(self) -> bool:
        """A shutdown keeps it queued for the next start. False when it ended already (or is
        ending), or was suspended before."""
        if self._settled or self._suspended:
            return False
        self._suspended = True
        return True

    def wake(self) -> None:
        """Its end (or suspension) is recorded: tell whoever waits on it."""
        self._done.set()

    def to_record(self) -> dict[str, Any]:
        """The job as the job store keeps it."""
        return {
            "id": self.id, "status": self.status.value, "params": self.params.to_dict(),
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "step": self.step, "total_steps": self.total_steps, "result": self.result,
            "error": self.error.to_record() if self.error else None,
            "idempotency_key": self.idempotency_key, "request_hash": self.request_hash, "attempts": self.attempts,
            "warnings": list(self.warnings) or None, "owner": self.owner, "webhook": self.webhook,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        """A job read back from the job store."""
        job = cls(
            params=GenerationParams.from_dict(record["params"]), id=record["id"], status=JobStatus(record["status"]),
            created_at=record["created_at"], started_at=record["started_at"], finished_at=record["finished_at"],
            step=record["step"], total_steps=record["total_steps"], result=record["result"],
            error=StoredError(record["error"]) if record["error"] else None,
            idempotency_key=record["idempotency_key"], request_hash=record["request_hash"], attempts=record["attempts"],
            warnings=tuple(record.get("warnings") or ()), owner=record.get("owner"), webhook=record.get("webhook"),
        )
        if job.status.terminal:
            job.wake()
        return job

    @property
    def progress(self) -> float:
        if self.status is JobStatus.SUCCEEDED:
            return 1.0
        return round(self.step / self.total_steps, 4) if self.total_steps else 0.0

    async def wait(self) -> None:
        """Until the job is succeeded, failed or cancelled."""
        await self._done.wait()

    def outcome(self) -> dict[str, Any]:
        """A finished job's result, or the error a waiting client should get."""
        if self.status is JobStatus.SUCCEEDED:
            return {"id": self.id, **(self.result or {})}
        if self.status is JobStatus.CANCELLED:
            raise self.error or JobCancelled(f"job {self.id} was cancelled before it finished")
        if self.error is None:
            raise GenerationFailed(f"job {self.id} has not finished")
        raise self.error
