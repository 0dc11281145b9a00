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

    Every step is stamped on the worker thread just before the server's ``on_step`` runs (on
    CUDA after a ``torch.cuda.synchronize()``, so a step's time is when its kernels finished,
    not when they were queued); each generation's start and end too. Records are kept by seed.
    ``pipeline_factory`` replaces loading (a pipeline already built in memory, e.g. the
    full-size random model) and ``compile_mode`` wraps the UNet in ``torch.compile``; the
    server's memory options are applied to either as usual.
    """

    def __init__(
        self,
        settings: Settings,
        runtime=None,
        *,
        pipeline_factory: Callable[[], Any] | None = None,
        compile_mode: str | None = None,
        sync_steps: bool | None = None,
    ) -> None:
        super().__init__(settings, runtime)
        self.pipeline_factory = pipeline_factory
        self.compile_mode = compile_mode
        self.sync_steps = self.runtime.on_cuda if sync_steps is None else sync_steps
        self.records: dict[int, GenerationRecord] = {}
        self.last: GenerationRecord | None = None
        self.original_unet: Any = None

    def _load_pipeline(self):
        if self.pipeline_factory is not None:
            return self.pipeline_factory()
        return super()._load_pipeline()

    def _apply_options(self, pipe) -> None:
        super()._apply_options(pipe)
        if self.compile_mode:
            self.original_unet = pipe.unet
            pipe.unet = torch.compile(pipe.unet, mode=None if self.compile_mode == "default" else self.compile_mode)
            self.options["compile"] = self.compile_mode

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
        return generation


