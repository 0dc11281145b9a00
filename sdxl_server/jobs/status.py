"""The backend's status as the api reads it: a snapshot taken where the device may be asked.

``describe`` and the GPU's memory ask torch (CUDA), which must not happen on the event loop; and a
description read there while the worker thread switches models could mix two models. So the
worker thread takes a :class:`Snapshot` whenever the backend's state may have changed (after a
load, after each job, after a model switch; once at start-up, on the executor, before the worker
runs) and the api reads the latest: ``/health``, ``/api/v1/info``, the metrics, the model checks.
Never imports torch or aiohttp.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backend import Backend
from .job import Job, ModelLoading, Save, StepReporter, Work


@dataclass(frozen=True)
class Snapshot:
    """The backend as it was at one moment: its description (what ``/health`` shows of the model
    and device) and the GPU memory its tensors held."""

    described: dict[str, Any]
    gpu_memory_allocated: float


class StatusBoard:
    """The latest :class:`Snapshot` of ``backend``: written on the worker thread, read on the loop
    (one reference replaced at a time, so a reader always gets a whole snapshot)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._latest: Snapshot | None = None

    @property
    def latest(self) -> Snapshot:
        if self._latest is None:
            raise RuntimeError("no snapshot of the backend was taken at start-up")
        return self._latest

    def take(self) -> None:
        """Describe the backend now (on the worker thread, or its executor: this may ask the device)."""
        described = copy.deepcopy(self._backend.describe())  # the engine's own dicts may change later
        self._latest = Snapshot(described, self._backend.gpu_memory_allocated())

    def loading(self) -> None:
        """A load begins: the backend says so itself (state ``loading``, no error) only once it
        has begun, and cannot be described meanwhile."""
        latest = self.latest
        model = {**latest.described["model"], "state": "loading", "loaded": False, "error": None}
        self._latest = Snapshot({**latest.described, "model": model}, latest.gpu_memory_allocated)

    def reporting(self, work: Work) -> Work:
        """``work`` that takes a snapshot after each load, job and model switch."""
        return _ReportingWork(work, self)


class _ReportingWork:
    """A :class:`Work` that keeps a :class:`StatusBoard` current, on the worker thread."""

    def __init__(self, work: Work, board: StatusBoard) -> None:
        self.work = work
        self.board = board

    @property
    def stops_early(self) -> bool:
        return self.work.stops_early

    def load(self) -> None:
        self.board.loading()
        try:
            self.work.load()
        finally:
            self.board.take()

    def __call__(self, job: Job, on_step: StepReporter, cancelled: Callable[[], bool]) -> Save:
        def step(step: int, total: int, extra: Any = None) -> None:
            if isinstance(extra, ModelLoading):  # a switch begins (loading) or is over (another model runs)
                self.board.loading() if extra.seconds is None else self.board.take()
            on_step(step, total, extra)

        try:
            return self.work(job, step, cancelled)
        finally:
            self.board.take()  # a lazy load, a refiner loaded or failed, memory held
