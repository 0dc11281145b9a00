"""Small statistics for the benchmark's figures (no numpy needed)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float], scale: float = 1.0, digits: int = 4) -> dict[str, Any]:
    """n, median, mean, min, max, quartiles and p99 of ``values`` times ``scale``."""
    scaled = [v * scale for v in values]
    if not scaled:
        return {"n": 0, "median": None, "mean": None, "min": None, "max": None, "q1": None, "q3": None, "p99": None}

    def r(x: float) -> float:
        return round(x, digits)

    return {
        "n": len(scaled),
        "median": r(percentile(scaled, 50)),
        "mean": r(sum(scaled) / len(scaled)),
        "min": r(min(scaled)),
        "max": r(max(scaled)),
        "q1": r(percentile(scaled, 25)),
        "q3": r(percentile(scaled, 75)),
        "p99": r(percentile(scaled, 99)),
    }


def linear_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y = slope * x + intercept``."""
    n = len(points)
    if n < 2:
        return 0.0, points[0][1] if points else 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0, mean_y
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return slope, mean_y - slope * mean_x


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux /proc; psutil elsewhere, if installed)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


