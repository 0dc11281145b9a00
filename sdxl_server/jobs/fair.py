"""The fair queue: the waiting jobs, taken round-robin across their owners (weighted), first in
first out within each owner.

Start-time fair queueing: each owner's line of jobs carries the virtual start tag of its first
job; the k-th job of an owner of weight w starts at ``head + k / w``, and jobs are taken in the
order of their tags (ties: the older job first). The queue's virtual time is the tag of the job
taken last, and an owner whose line was empty starts no earlier than it, so an owner that was
idle gains no credit, and a new owner's job is next (or right behind the jobs already tagged
at that time): key A's burst of 100 jobs delays key B's next job by at most one job per lane.
A cancelled job leaves no gap in its owner's line. The order is the order jobs will be taken
in, so positions and estimates read it (:meth:`FairQueue.ordered`). Exact tags
(:class:`~fractions.Fraction`) keep weights like 3 exact. Never imports torch or aiohttp.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

from .job import Job

WeightOf = Callable[[str | None], int]


@dataclass
class _Line:
    """One owner's waiting jobs, oldest first, and the tag of the first (or of the next to come)."""

    head: Fraction
    jobs: deque[Job] = field(default_factory=deque)


class FairQueue:
    """The waiting jobs of every owner; ``weight_of(owner)`` is read each time the order is
    computed, so a changed weight (a keys file read again) applies to the jobs already waiting."""

    def __init__(self, weight_of: WeightOf | None = None) -> None:
        self.weight_of: WeightOf = weight_of or (lambda owner: 1)
        self._lines: dict[str | None, _Line] = {}
        self._seq: dict[str, int] = {}  # job id -> arrival order (ties between owners)
        self._counter = itertools.count()
        self._now = Fraction(0)  # the virtual time: the tag of the job taken last
        self._order: list[Job] | None = None  # the cached order, None once it changes
        self._index: dict[str, int] = {}

    def _weight(self, owner: str | None) -> Fraction:
        return Fraction(max(1, int(self.weight_of(owner) or 1)))

    def _line(self, owner: str | None) -> _Line:
        line = self._lines.get(owner)
        if line is None:
            line = self._lines[owner] = _Line(self._now)
        elif not line.jobs:
            line.head = max(line.head, self._now)  # an idle owner gains no credit
        return line

    def _changed(self) -> None:
        self._order = None

    # -- changes --------------------------------------------------------------------------

    def append(self, job: Job) -> None:
        """``job`` waits at the end of its owner's line."""
        self._line(job.owner).jobs.append(job)
        self._seq[job.id] = next(self._counter)
        self._changed()

    def appendleft(self, job: Job) -> None:
        """``job`` (an interrupted one, queued again) goes first: at the head of its owner's line,
        tagged with the virtual time, older than any job of that tag."""
        line = self._line(job.owner)
        line.head = min(line.head, self._now)
        line.jobs.appendleft(job)
        self._seq[job.id] = -1 - next(self._counter)
        self._changed()

    def remove(self, job: Job) -> None:
        """Take ``job`` out (cancelled); its owner's later jobs move up. ValueError if absent."""
        line = self._lines.get(job.owner)
        if line is None:
            raise ValueError(f"job {job.id} is not waiting")
        line.jobs.remove(job)
        self._seq.pop(job.id, None)
        self._changed()

    def take(self, blocked: Collection[str | None] = ()) -> Job | None:
        """The next job in the fair order whose owner is not ``blocked`` (at its limit of jobs
        running at once), removed; None if there is none."""
        for job in self.ordered():
            if job.owner not in blocked:
                break
        else:
            return None
        line = self._lines[job.owner]
        tag = self._tag(line, 0)
        if line.jobs[0] is not job:  # only an owner's first job is ever taken (FIFO within an owner)
            raise AssertionError("the fair order broke an owner's FIFO")
        line.jobs.popleft()
        line.head = tag + 1 / self._weight(job.owner)
        self._now = max(self._now, tag)
        self._seq.pop(job.id, None)
        self._changed()
        return job

    def clear(self) -> None:
        for line in self._lines.values():
            line.jobs.clear()
        self._seq.clear()
        self._changed()

    # -- reading --------------------------------------------------------------------------

    def _tag(self, line: _Line, k: int) -> Fraction:
        return line.head + k / self._weight(line.jobs[k].owner)

    def ordered(self) -> list[Job]:
        """Every waiting job, in the order they will be taken (while no new job comes)."""
        if self._order is None:
            lines = [self._keyed(line) for line in self._lines.values() if line.jobs]
            self._order = [job for _, _, job in heapq.merge(*lines, key=lambda entry: entry[:2])]
            self._index = {job.id: index for index, job in enumerate(self._order)}
        return self._order

    def _keyed(self, line: _Line) -> Iterator[tuple[Fraction, int, Job]]:
        step = 1 / self._weight(line.jobs[0].owner)
        for k, job in enumerate(line.jobs):
            yield line.head + k * step, self._seq[job.id], job

    def index(self, job: Job) -> int:
        """``job``'s place in :meth:`ordered` (0: next); ValueError if it is not waiting."""
        self.ordered()
        try:
            return self._index[job.id]
        except KeyError:
            raise ValueError(f"job {job.id} is not waiting") from None

    def __contains__(self, job: object) -> bool:
        return isinstance(job, Job) and job.id in self._seq

    def __len__(self) -> int:
        return len(self._seq)

    def __bool__(self) -> bool:
        return bool(self._seq)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self.ordered()))
