"""Hires fix's second pass: the latents of the passes before it (the base, and the refiner within
the first pass as A1111 runs it) upscaled, then repainted image to image at the larger size.

A latent upscaler (``Latent``, ``Latent (bicubic)``, ...) interpolates the latents; a pixel one
(``Lanczos``, ``Nearest``, or a model from ``UPSCALERS_DIR``) decodes them, resizes the images and
gives them to the image-to-image pipeline, which encodes them again. The second pass runs on the
running model's image-to-image pipeline with its own steps (``steps`` at ``denoise``), sampler
and prompts; cancel is checked before and after the upscale as at every step.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ...sampling import AUTOMATIC, schedule_problem, split_combined
from ...errors import JobCancelled
from ...params import GenerationParams, HiresOptions
from ..hires_upscale import is_latent, upscale_latents
from ..ip_adapters import ScaleSchedule, reference_images
from . import Batch, PassContext, PassHost, StepReport, diffusers_step_end


@dataclass
class HiresPass:
    host: PassHost
    options: HiresOptions
    steps: int
    scheduler: Any
    cover: tuple[int, int]  # the size the first pass's result is upscaled to
    size: tuple[int, int]  # the final size (``cover`` cropped at the centre)
    prompts: dict[str, Any] | None  # the second pass's own prompt embeddings (None: the first pass's)
    sampler: str
    timings: dict[str, float] = field(default_factory=lambda: {"upscale_s": 0.0, "second_pass_s": 0.0})
    name: str = "hires"
    takes_over_at: float | None = None
    references: dict[str, Any] = field(default_factory=dict)  # the IP-Adapters' reference images (``ip_adapter_image``)
    schedule: ScaleSchedule | None = None  # their start/end over this pass's steps

    def run(self, batch: Batch, latents: Any, report: StepReport) -> Any:
        _check(batch)
        started = time.perf_counter()
        image = self._upscaled(batch, latents)
        _check(batch)
        upscaled = _synchronized(latents)
        pipe = self.host.mode_pipeline("img2img")
        first_scheduler, pipe.scheduler = pipe.scheduler, self.scheduler
        try:
            steps = self.options.steps or batch.common["num_inference_steps"]
            with self.schedule.held(pipe) if self.schedule else contextlib.nullcontext():
                result = pipe(
                    **(self.prompts or batch.prompts), **{**batch.common, "num_inference_steps": steps}, **self.references,
                    image=image, strength=self.options.denoise, generator=batch.generators(),
                    callback_on_step_end=diffusers_step_end(report, self.schedule.step_end if self.schedule else None),
                ).images
        finally:
            pipe.scheduler = first_scheduler  # the first pass may run on the same pipeline (image to image)
        self.timings["upscale_s"] += upscaled - started
        self.timings["second_pass_s"] += _synchronized(result) - upscaled
        return result

    def _upscaled(self, batch: Batch, latents: Any) -> Any:
        """The latents upscaled (a latent mode), or the decoded images upscaled (a pixel upscaler)."""
        upscaler = self.options.upscaler
        if is_latent(upscaler):
            return upscale_latents(latents, upscaler, self.cover, self.size)
        images = self.host.decode(latents)
        return [self.host.upscale_image(image, upscaler, self.cover, self.size, batch.cancelled) for image in images]

    def info(self) -> dict[str, Any]:
        return {"hires": {"width": self.size[0], "height": self.size[1], "sampler": self.sampler,
                          **{name: round(seconds, 4) for name, seconds in self.timings.items()}}}


def _check(batch: Batch) -> None:
    if batch.cancelled():
        raise JobCancelled("the job was cancelled")


def _synchronized(tensor: Any) -> float:
    """The host's clock once ``tensor``'s device work is done (the phases' times for the bench)."""
    if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    return time.perf_counter()


def hires_pass(context: PassContext) -> HiresPass | None:
    """Hires fix's second pass when the request asks for it, else None."""
    params, host = context.params, context.host
    options = params.hires
    if not options.enabled:
        return None
    cover, size = options.target(params.width, params.height)
    sampler, schedule = second_pass_sampler(params)
    scheduler = host.scheduler_for(sampler, schedule)
    prompts = None
    if options.prompt or options.negative_prompt:
        prompts = host.prompt_embeddings(_second_prompts(params))
    return HiresPass(host, options, params.hires_steps, scheduler, cover, size, prompts,
                     host.sampler_name(sampler, scheduler), references=reference_images(params, context.inputs),
                     schedule=ScaleSchedule.of(params.ip.units))


def second_pass_sampler(params: GenerationParams) -> tuple[str, str]:
    """The second pass's sampler and schedule type: the request's, or those hires fix names (an
    older combined name carries its schedule; one the sampler does not take runs as automatic)."""
    options = params.hires
    if not options.scheduler and not options.schedule:
        return params.sampler, params.schedule
    sampler, carried = split_combined(options.scheduler) if options.scheduler else (params.sampler, params.schedule)
    schedule = options.schedule or carried
    return sampler, schedule if schedule_problem(sampler, schedule) is None else AUTOMATIC


def _second_prompts(params: GenerationParams) -> GenerationParams:
    """The request with the second pass's prompts (an empty one: the first pass's, as in A1111)."""
    options = params.hires
    return params.replace(prompt=options.prompt or params.prompt,
                          negative_prompt=options.negative_prompt or params.negative_prompt)
