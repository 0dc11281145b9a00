"""Each key's requests over the last minute: a sliding window on the monotonic clock, so a wall
clock set back or forward changes nothing (the reset time a client is told is on the wall clock).
Never imports torch or aiohttp.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from ..errors import OverLimit
from ..jobs.usage import iso_time

WINDOW_S = 60.0


class RateWindow:
    """Requests per key over the last minute: each key's last ``requests_per_minute`` request
    times, so memory is bounded by the keys and their limits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.clock, self.wall = clock, wall
        self._times: dict[str | None, deque[float]] = {}

    def charge(self, name: str | None, cost: int, per_minute: int) -> None:
        """Count ``cost`` requests of ``name``; raise :class:`OverLimit` if that makes more than
        ``per_minute`` in the last minute (and count none)."""
        now = self.clock()
        times = self._times.setdefault(name, deque())
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        if len(times) + cost > per_minute:
            frees = len(times) + cost - per_minute  # that many must leave the window first
            wait = times[frees - 1] + WINDOW_S - now if 0 < frees <= len(times) else WINDOW_S
            raise OverLimit(
                f"this key may make {per_minute} generation request(s) a minute: retry in {math.ceil(wait)}s",
                limit="requests_per_minute", resets_at=iso_time(self.wall() + wait), retry_after_s=math.ceil(wait),
            )
        times.extend([now] * cost)
