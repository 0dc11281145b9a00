"""The ETA model: how long a step and a job take here, measured as jobs run."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable

from ..params import GenerationParams
from .job import Job

RunningLimit = Callable[[str | None], int | None]  # an owner's jobs that may run at once (None: any)


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
    def _passes(params: GenerationParams) -> float:
        """What one step costs against a step with guidance (two UNet passes): 1, or 0.5 without."""
        return params.unet_passes / 2

    def _blend(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def record_step(self, params: GenerationParams, seconds: float, step: int = 1, total: int = 0) -> None:
        """One step's time; ``step`` of ``total`` says its size (hires fix's second pass runs larger).
        An upscale job's steps are tiles, not denoising steps: they teach nothing here."""
        if params.mode == "upscale":
            return
        mpx = params.step_megapixels(step, total) if total else self._mpx(params)
        self.step_s_per_mpx = self._blend(self.step_s_per_mpx, seconds / ((mpx or self._mpx(params)) * self._passes(params)))

    def record_job(self, params: GenerationParams, seconds: float, steps_done: int) -> None:
        if self.step_s_per_mpx is None or params.mode == "upscale":
            return
        done_mpx = params.megapixel_steps(0, params.total_steps) - params.megapixel_steps(steps_done, params.total_steps)
        overhead = max(0.0, seconds - self.step_s_per_mpx * done_mpx * self._passes(params))
        self.overhead_s_per_mpx = self._blend(self.overhead_s_per_mpx, overhead / self._mpx(params))

    def job_seconds(self, params: GenerationParams) -> float | None:
        if self.step_s_per_mpx is None:
            return None
        mpx = self._mpx(params)
        return (params.megapixel_steps(0, params.total_steps) * self.step_s_per_mpx * self._passes(params)
                + (self.overhead_s_per_mpx or 0.0) * mpx)

    def remaining_seconds(self, job: Job, now: float) -> float | None:
        """Seconds until ``job`` (running) finishes."""
        if self.step_s_per_mpx is None:
            return None
        mpx = self._mpx(job.params)
        left = (job.params.megapixel_steps(job.step, job.total_steps) * self.step_s_per_mpx * self._passes(job.params)
                + (self.overhead_s_per_mpx or 0.0) * mpx)
        if job.step == 0 and job.started_at is not None:
            left -= now - job.started_at  # still encoding the prompt: part of the overhead is spent
        return max(0.0, left)

    def plan(
        self, running: list[Job], waiting: Iterable[Job], concurrency: int, now: float,
        running_limit: RunningLimit | None = None,
    ) -> tuple[list[tuple[Job, float | None]], list[float] | None]:
        """Each waiting job in order with the seconds until it finishes (None: not known yet), and
        when each of the ``concurrency`` slots is free once they have run (None: unknown).

        Each waiting job goes to the slot that frees first, as the worker takes them; a job for
        another model than the one before it pays that model's switch. With ``running_limit``
        (an owner's jobs that may run at once, None: any), an owner at its limit is skipped as the
        worker skips it, and the jobs come back in the order they will start."""
        waiting = list(waiting)
        if running_limit is not None and any(running_limit(job.owner) is not None for job in [*running, *waiting]):
            return self._plan_limited(running, waiting, concurrency, now, running_limit)
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

    def _plan_limited(
        self, running: list[Job], waiting: list[Job], concurrency: int, now: float, running_limit: RunningLimit,
    ) -> tuple[list[tuple[Job, float | None]], list[float] | None]:
        """:meth:`plan` when owners have running limits: the worker simulated, a slot that frees
        taking the first waiting job whose owner is below its limit (a slot idle while none is)."""
        remaining = [self.remaining_seconds(job, now) for job in running]
        if None in remaining:
            return [(job, None) for job in waiting], None
        ends = [(left, job.owner) for left, job in zip(remaining, running)]  # (when a slot frees, whose job ends)
        heapq.heapify(ends)
        counts = Counter(job.owner for job in running)
        idle, at, pending, planned = max(0, concurrency - len(running)), 0.0, list(waiting), []
        model = running[-1].params.model if running else None
        while pending:
            index = next((i for i, job in enumerate(pending) if _below(running_limit(job.owner), counts[job.owner])), None)
            if idle and index is not None:
                job = pending.pop(index)
                seconds = self.job_seconds(job.params)
                if seconds is None:
                    return planned + [(other, None) for other in [job, *pending]], None
                if model is not None and job.params.model != model:
                    seconds += self.switch_seconds(job.params.model)
                model, idle = job.params.model, idle - 1
                counts[job.owner] += 1
                heapq.heappush(ends, (at + seconds, job.owner))
                planned.append((job, at + seconds))
            elif ends:  # wait for the next job to end
                at, owner = heapq.heappop(ends)
                counts[owner] -= 1
                idle += 1
            else:
                break  # (cannot happen: with nothing running every owner is below its limit)
        return planned, [end for end, _ in ends] + [at] * idle


def _below(limit: int | None, count: int) -> bool:
    return limit is None or count < limit
