"""Prometheus metrics (``GET /metrics``), fed by the same job events the websocket sends.

Each application has its own registry, so several apps (tests) never share counters. Never
imports torch: GPU memory is read from the engine's latest snapshot (:mod:`sdxl_server.jobs.status`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported for the view
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..jobs.states import TERMINAL_EVENTS

_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, float("inf"))


def key_label(owner: str | None) -> str:
    """A job owner as the ``key`` label: the key's name; ``(none)`` for the jobs of no key of
    ``KEYS_FILE`` (the single ``API_KEY``, a server without keys), a name no key can have."""
    return owner if owner is not None else "(none)"


class _PerKey(Collector):
    """Gauges read at each scrape: each key's jobs waiting and running now, and its use of today
    (``read()``: key -> {"waiting", "running", "images_today", "gpu_seconds_today"})."""

    _DOCS = {
        "waiting": "Jobs waiting now, by key",
        "running": "Jobs running now, by key",
        "images_today": "Images made today (UTC), by key",
        "gpu_seconds_today": "GPU-seconds used today (UTC), by key",
    }

    def __init__(self, read: Callable[[], dict[str, dict[str, float]]]) -> None:
        self._read = read

    def collect(self):
        values = self._read()
        for name, doc in self._DOCS.items():
            family = GaugeMetricFamily(f"sdxl_key_{name}", doc, labels=["key"])
            for key, figures in values.items():
                family.add_metric([key], figures.get(name, 0.0))
            yield family


class Metrics:
    """The server's metrics. :meth:`observe` takes every job event; gauges read live state."""

    def __init__(
        self,
        *,
        queue_depth: Callable[[], float],
        running: Callable[[], float],
        websockets: Callable[[], float],
        model_load_seconds: Callable[[], float],
        gpu_memory: Callable[[], float] | None = None,
        per_key: Callable[[], dict[str, dict[str, float]]] | None = None,
    ) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.jobs = Counter("sdxl_jobs", "Jobs that ended, by final status", ["status"], registry=registry)
        self.generation_seconds = Histogram(
            "sdxl_generation_seconds", "Seconds from a job's start to its image being saved",
            buckets=_DURATION_BUCKETS, registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "sdxl_queue_wait_seconds", "Seconds a job waited in the queue before starting",
            buckets=_DURATION_BUCKETS, registry=registry,
        )
        self.step_seconds = Histogram(
            "sdxl_step_seconds", "Seconds per denoising step", buckets=_STEP_BUCKETS, registry=registry
        )
        for name, doc, read in (
            ("sdxl_queue_depth", "Jobs waiting in the queue", queue_depth),
            ("sdxl_jobs_running", "Jobs running now (0 or 1)", running),
            ("sdxl_websocket_connections", "Open websocket connections", websockets),
            ("sdxl_model_load_seconds", "Seconds the model took to load (0 until loaded)", model_load_seconds),
        ):
            Gauge(name, doc, registry=registry).set_function(read)
        if gpu_memory is not None:
            Gauge("sdxl_gpu_memory_allocated_bytes", "GPU memory held by torch tensors", registry=registry).set_function(
                gpu_memory
            )
        self._last_step: dict[str, tuple[int, float]] = {}
        self._keys(registry, per_key)

    def _keys(self, registry: CollectorRegistry, per_key: Callable[[], dict[str, dict[str, float]]] | None) -> None:
        """The metrics labelled by key name (as many series as keys: only keys label them)."""
        self.key_jobs = Counter("sdxl_key_jobs", "Jobs that ran, by key", ["key"], registry=registry)
        self.key_images = Counter("sdxl_key_images", "Images made, by key", ["key"], registry=registry)
        self.key_gpu_seconds = Counter(
            "sdxl_key_gpu_seconds", "Seconds a key's jobs held a worker (measured)", ["key"], registry=registry)
        self.key_refused = Counter(
            "sdxl_key_refused", "Requests refused by a key's limits, by key and limit", ["key", "limit"], registry=registry)
        if per_key is not None:
            registry.register(_PerKey(per_key))

    def used(self, owner: str | None, jobs: int = 0, images: int = 0, gpu_seconds: float = 0.0) -> None:
        """A key's usage grew (fed by the usage ledger)."""
        key = key_label(owner)
        for counter, amount in ((self.key_jobs, jobs), (self.key_images, images), (self.key_gpu_seconds, gpu_seconds)):
            if amount:
                counter.labels(key=key).inc(amount)

    def refused(self, owner: str | None, limit: str) -> None:
        self.key_refused.labels(key=key_label(owner), limit=limit).inc()

    def observe(self, event: dict[str, Any]) -> None:
        kind, job_id = event["type"], event.get("id")
        if kind == "started" and event.get("queued_s") is not None:
            self.queue_wait_seconds.observe(event["queued_s"])
        elif kind == "progress":
            previous = self._last_step.get(job_id)
            if previous is not None and event["step"] == previous[0] + 1:
                self.step_seconds.observe(max(0.0, event["elapsed_s"] - previous[1]))
            self._last_step[job_id] = (event["step"], event["elapsed_s"])
        elif kind == "suspended":
            self._last_step.pop(job_id, None)
        elif kind in TERMINAL_EVENTS:
            self._last_step.pop(job_id, None)
            self.jobs.labels(status=event["status"]).inc()
            if kind == "completed" and event.get("run_s") is not None:
                self.generation_seconds.observe(event["run_s"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
