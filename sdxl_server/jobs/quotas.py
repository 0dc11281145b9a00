"""A key's limits where the queue applies them: before a job is queued (the models and LoRAs it
may use, its jobs waiting, its images and GPU-seconds of the day) and when the worker takes the
next job (its jobs running at once). The requests per minute are the api's (its admission, before
a body is read). Each refusal names the limit and when it resets (:class:`~sdxl_server.errors.OverLimit`).
Never imports torch or aiohttp.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from ..errors import NotAllowed, OverLimit
from ..params import GenerationParams
from .eta import ThroughputEstimate
from .job import Job
from .owners import UNLIMITED, Limits
from .states import JobStatus
from .usage import UsageLedger, iso_time, next_midnight

class QueueState(Protocol):
    """What the checks read of the queue (:class:`~.queue.JobQueue`)."""

    concurrency: int
    estimate: ThroughputEstimate

    @property
    def running_jobs(self) -> list[Job]: ...

    @property
    def waiting(self) -> int: ...

    def active(self) -> list[Job]: ...

    def unfinished(self) -> list[Job]: ...

    def eta_seconds(self, job: Job | None) -> float | None: ...


LimitsOf = Callable[[str | None], Limits]
"""An owner's limits now (the keys file may change while jobs wait); unknown owners: none."""


def no_limits(owner: str | None) -> Limits:
    return UNLIMITED


class Quotas:
    """The limits of each owner (``limits_of``), checked against the queue and ``usage``."""

    def __init__(self, usage: UsageLedger, limits_of: LimitsOf = no_limits) -> None:
        self.usage = usage
        self.limits_of = limits_of

    def running_limit(self, owner: str | None) -> int | None:
        """How many of ``owner``'s jobs may run at once (None: any)."""
        return self.limits_of(owner).running

    def weight(self, owner: str | None) -> int:
        """``owner``'s share of the fair queue."""
        return self.limits_of(owner).weight

    def check(self, owner: str | None, params: GenerationParams, queue: QueueState) -> None:
        """Raise :class:`NotAllowed` or :class:`OverLimit` if ``owner`` may not queue ``params``
        on ``queue`` now."""
        limits = self.limits_of(owner)
        if limits == UNLIMITED:
            return
        _check_allowed(limits, params)
        queued = [job for job in queue.active() if job.owner == owner and job.status is JobStatus.QUEUED]  # in order
        running = queue.running_jobs
        starts_now = queue.concurrency - len(running) > queue.waiting and owner not in self.blocked(running)
        if limits.waiting is not None and len(queued) + (not starts_now) > limits.waiting:
            retry = _until_start(queue, queued[0]) if queued else None
            retry = math.ceil(retry) if retry is not None else 10
            raise OverLimit(
                f"this key may have {limits.waiting} job(s) waiting at once and has {len(queued)}: "
                "retry once one of them has started",
                limit="waiting", resets_at=iso_time(self.usage.clock() + retry), retry_after_s=retry,
            )
        self._check_daily(owner, limits, params, [job for job in queue.unfinished() if job.owner == owner])

    def _check_daily(self, owner: str | None, limits: Limits, params: GenerationParams, mine: list[Job]) -> None:
        now = self.usage.clock()
        used = self.usage.today(owner)
        reset = next_midnight(now)
        over = dict(limit="images_per_day", resets_at=iso_time(reset), retry_after_s=math.ceil(reset - now))
        if limits.images_per_day is not None:
            pending = sum(job.params.num_images for job in mine)
            if used.images + pending + params.num_images > limits.images_per_day:
                raise OverLimit(
                    f"this key may make {limits.images_per_day} image(s) a day (UTC); {used.images} made today, "
                    f"{pending} queued, {params.num_images} asked for", **over)
        if limits.gpu_seconds_per_day is not None and used.gpu_seconds >= limits.gpu_seconds_per_day:
            raise OverLimit(
                f"this key may use {limits.gpu_seconds_per_day:g} GPU-seconds a day (UTC) and has used "
                f"{used.gpu_seconds:.1f} today", **{**over, "limit": "gpu_seconds_per_day"})

    def blocked(self, running: Iterable[Job]) -> set[str | None]:
        """The owners running as many jobs at once as their limit allows: the worker skips their
        waiting jobs for now."""
        counts = Counter(job.owner for job in running)
        return {owner for owner, count in counts.items() if _at_most(self.limits_of(owner).running, count)}


def _until_start(queue: QueueState, job: Job) -> float | None:
    """Seconds until the waiting ``job`` starts: when it should finish, less its own run."""
    eta, run = queue.eta_seconds(job), queue.estimate.job_seconds(job.params)
    return None if eta is None or run is None else max(1.0, eta - run)


def _at_most(limit: int | None, count: int) -> bool:
    return limit is not None and count >= limit


def _check_allowed(limits: Limits, params: GenerationParams) -> None:
    if limits.models is not None and params.model not in limits.models:
        raise NotAllowed(
            f"model: this key may not use the model {params.model[:80]!r}; it may use: {', '.join(limits.models) or 'none'}",
            limit="models", fields={"model": ["Not allowed for this key."]},
        )
    if limits.loras is not None:
        refused = [name for name, _ in params.loras if name not in limits.loras]
        if refused:
            raise NotAllowed(
                f"loras: this key may not use the LoRA(s) {', '.join(n[:80] for n in refused)}; "
                f"it may use: {', '.join(limits.loras) or 'none'}",
                limit="loras", fields={"loras": ["Not allowed for this key."]},
            )
