"""The base pass: the running model's pipeline for the request's mode (text to image, image to
image or inpainting; see :mod:`..modes`), from noise or the input image to latents. When a later
pass finishes the schedule (the refiner's ensemble), the base stops where it takes over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..modes import ModeRun
from . import Batch, PassContext, StepReport, cutoff_timestep, diffusers_step_end, schedule_timesteps


@dataclass
class BasePass:
    """The mode's pipeline; ``until`` holds diffusers' ``denoising_end`` when a later pass takes over."""

    mode: ModeRun
    steps: int
    until: dict[str, Any] = field(default_factory=dict)
    name: str = "base"
    takes_over_at: float | None = None

    @classmethod
    def build(cls, context: PassContext, mode: ModeRun, denoising_end: float | None) -> BasePass:
        params = context.params
        strength = None if params.mode == "txt2img" else params.image.strength
        timesteps = schedule_timesteps(context.scheduler, params.steps, strength)
        if denoising_end is None:
            return cls(mode, len(timesteps))
        cutoff = cutoff_timestep(context.scheduler, denoising_end)
        return cls(mode, sum(1 for t in timesteps if t >= cutoff), {"denoising_end": denoising_end})

    def run(self, batch: Batch, latents: Any, report: StepReport) -> Any:
        with self.mode.around():
            return self.mode.pipe(
                **batch.prompts, **batch.common, **self.mode.arguments, **self.until,
                generator=batch.generators(), callback_on_step_end=diffusers_step_end(report, self.mode.step_end),
            ).images

    def info(self) -> dict[str, Any]:
        return {}
