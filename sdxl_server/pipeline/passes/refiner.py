"""The refiner pass (SDXL's refiner model; the model itself is :mod:`..refiner`).

``ensemble``: the base stops at ``refiner_switch_at`` of the schedule (diffusers'
``denoising_end``) and the refiner finishes the same latents (``denoising_start``), so together
they run the request's schedule once. ``image``: the base runs in full and the refiner repaints
its result image to image at ``refiner_strength``. The refiner has only the second text encoder:
it gets its part of the base's prompt embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...params import denoising_steps
from ..prompt_encoding import refiner_prompts
from . import Batch, PassContext, PassHost, StepReport, cutoff_timestep, diffusers_step_end, schedule_timesteps


@dataclass
class RefinerPass:
    pipe: Any  # the refiner pipeline, loaded and sharing the running model's text encoder 2 and VAE
    host: PassHost
    steps: int
    arguments: dict[str, Any]
    takes_over_at: float | None
    clip_skip: int = 1  # the request's, for an empty negative prompt the refiner encodes itself
    name: str = "refiner"

    def run(self, batch: Batch, latents: Any, report: StepReport) -> Any:
        host = self.host
        with host.text_encoders_on(self.pipe), host.refiner.running(host.pipe):
            return self.pipe(
                **refiner_prompts(batch.prompts, self.pipe, self.clip_skip), **batch.common, image=latents, **self.arguments,
                generator=batch.generators(), callback_on_step_end=diffusers_step_end(report),
            ).images

    def info(self) -> dict[str, Any]:
        return {"refiner": self.host.refiner.source.model_id}


def refiner_pass(context: PassContext) -> RefinerPass | None:
    """The refiner pass a request asks for (loading the refiner on first use), or None."""
    params, host = context.params, context.host
    options = params.refiner
    if options.mode == "none":
        return None
    pipe = host.refiner.ensure(host.pipe, host.options)
    pipe.scheduler = host.refiner.scheduler((params.sampler, params.schedule), context.scheduler)
    if options.mode == "ensemble":
        cutoff = cutoff_timestep(context.scheduler, options.switch_at)
        steps = sum(1 for t in schedule_timesteps(context.scheduler, params.steps) if t < cutoff)
        return RefinerPass(pipe, host, steps, {"denoising_start": options.switch_at}, options.switch_at, params.clip_skip)
    steps = denoising_steps(params.steps, options.strength)
    return RefinerPass(pipe, host, steps, {"strength": options.strength}, None, params.clip_skip)

