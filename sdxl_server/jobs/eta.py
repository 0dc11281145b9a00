"""The ETA model: how long a step and a job take here, measured as jobs run."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from ..params import GenerationParams
from .job import Job


class ThroughputEstimate:
    """Seconds per denoising step per megapixel (per UNet pass: a step at guidance 1 or below costs
    half of one with classifier-free guidance), and fixed seconds per job per megapixel (text
    encoding, decoding, saving), each a moving average measured on this machine."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.step_s_per_mpx: float | None = None
        self.overhead_s_per_mpx: float | None = None
        self.switch_s: dict[str, float] = {}  # model -> seconds to switch to it, last measured

    def record_switch(self, model: str, seconds: float) -> None:
        self.switch_s[model] = seconds

    def switch_seconds(self, model: str) -> float:
        return self.switch_s.get(model, 0.0)

    @staticmethod
    def _mpx(params: GenerationParams) -> float:
        return params.pixels / 1e6

    @staticmethod
    def _step_work(params: GenerationParams) -> float:
        """What one step costs in units of one UNet pass over a megapixel."""
        return params.pixels / 1e6 * params.unet_passes / 2

    def _blend(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def record_step(self, params: GenerationParams, seconds: float) -> None:
        self.step_s_per_mpx = self._blend(self.step_s_per_mpx, seconds / self._step_work(params))

    def record_job(self, params: GenerationParams, seconds: float, steps_done: int) -> None:
        if self.step_s_per_mpx is None:
            return
        overhead = max(0.0, seconds - steps_done * self.step_s_per_mpx * self._step_work(params))
        self.overhead_s_per_mpx = self._blend(self.overhead_s_per_mpx, overhead / self._mpx(params))

    def job_seconds(self, params: GenerationParams) -> float | None:
        if self.step_s_per_mpx is None:
            return None
        return (params.total_steps * self.step_s_per_mpx * self._step_work(params)
                + (self.overhead_s_per_mpx or 0.0) * self._mpx(params))

    def remaining_seconds(self, job: Job, now: float) -> float | None:
        """Seconds until ``job`` (running) finishes."""
        if self.step_s_per_mpx is None:
            return None
        left = ((job.total_steps - job.step) * self.step_s_per_mpx * self._step_work(job.params)
                + (self.overhead_s_per_mpx or 0.0) * self._mpx(job.params))
        if job.step == 0 and job.started_at is not None:
            left -= now - job.started_at  # still encoding the prompt: part of the overhead is spent
        return max(0.0, left)

    def plan(
        self, running: list[Job], waiting: Iterable[Job], concurrency: int, now: float
    ) -> tuple[list[tuple[Job, float | None]], list[float] | None]:
        """Each waiting job in order with the seconds until it finishes (None: not known yet), and
        when each of the ``concurrency`` slots is free once they have run (None: unknown).

        Each waiting job goes to the slot that frees first, as the worker takes them; a job for
        another model than the one before it pays that model's switch."""
        remaining = [self.remaining_seconds(job, now) for job in running]
        slots: list[float] | None = None if None in remaining else [
            *remaining, *[0.0] * max(0, concurrency - len(remaining))]  # type: ignore[list-item]
        if slots is not None:
            heapq.heapify(slots)
        planned: list[tuple[Job, float | None]] = []
        model = running[-1].params.model if running else None
        for job in waiting:
            seconds = self.job_seconds(job.params)
            if seconds is not None and model is not None and job.params.model != model:
                seconds += self.switch_seconds(job.params.model)  # measured per model
            model = job.params.model
            if slots is None or seconds is None:
                slots = None
                planned.append((job, None))
                continue
            finish = heapq.heappop(slots) + seconds
            heapq.heappush(slots, finish)
            planned.append((job, finish))
        return planned, slots
