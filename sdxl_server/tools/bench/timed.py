"""The server's engine with timestamps on every step and generation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...config import Settings
from ...params import GenerationParams
from ...pipeline.engine import Engine


@dataclass
class GenerationRecord:
    """One ``generate`` call as the worker thread saw it (``time.perf_counter()`` seconds)."""

    seed: int
    started: float = 0.0
    finished: float = 0.0
    step_times: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def it_per_s(self) -> float | None:
        """Denoising steps per second between the first and the last step (the steady rate, as
        diffusers' progress bar shows it); None with fewer than two steps."""
        if len(self.step_times) < 2 or self.step_times[-1] <= self.step_times[0]:
            return None
        return (len(self.step_times) - 1) / (self.step_times[-1] - self.step_times[0])


class TimedEngine(Engine):
    """The server's :class:`~sdxl_server.pipeline.engine.Engine`, plus timestamps.

    Every step is stamped on the worker thread just before the server's ``on_step`` runs; each
    generation's start and end too. Records are kept by seed, and the last generation's images.
    With ``sync_steps`` (off by default: the server itself never waits between steps) each
    step's stamp waits for its kernels on CUDA, so a step's time is when it finished rather than
    when it was queued, at the cost of a synchronisation per step. ``pipeline_factory`` replaces
    loading (a pipeline already built in memory, e.g. the full-size random model); the server's
    options (memory profile, COMPILE, CHANNELS_LAST, FUSE_QKV) are applied to it as usual.
    """

    def __init__(
        self,
        settings: Settings,
        runtime=None,
        *,
        pipeline_factory: Callable[[], Any] | None = None,
        sync_steps: bool = False,
    ) -> None:
        super().__init__(settings, runtime)
        self.pipeline_factory = pipeline_factory
        self.sync_steps = sync_steps
        self.records: dict[int, GenerationRecord] = {}
        self.last: GenerationRecord | None = None
        self.last_images: list[Any] = []

    def _load_pipeline(self):
        if self.pipeline_factory is not None:
            return self.pipeline_factory()
        return super()._load_pipeline()

    def generate(self, params: GenerationParams, on_step, cancelled, **inputs):
        record = GenerationRecord(seed=params.seed)
        self.records[params.seed] = record
        device = torch.device(self.runtime.device)
        sync = self.sync_steps and self.runtime.on_cuda

        def timed(step: int, total: int, latents: Any) -> None:
            if sync:
                torch.cuda.synchronize(device)
            record.step_times.append(time.perf_counter())
            on_step(step, total, latents)

        record.started = time.perf_counter()
        try:
            generation = super().generate(params, timed, cancelled, **inputs)
        finally:
            record.finished = time.perf_counter()
            self.last = record
        record.info = dict(generation.info)
        self.last_images = generation.images
        return generation


