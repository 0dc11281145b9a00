"""The passes of one generation: the base, then optional passes (the refiner, hires fix).

A pass is a small class that declares its steps before anything runs (so the job's progress has
one true total from the first step), takes the latents the previous pass made (None for the
first) and hands on its own. :mod:`..plan` builds the passes for a request and runs them in one
loop, where progress, previews, cancel, A1111's interrupt and out-of-memory handling live.

A pass after the base is one factory in :data:`..plan.LATER_PASSES` that returns the pass a
request asks for, or None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ...params import GenerationParams, denoising_steps


@dataclass
class Batch:
    """What every pass of one batch shares: its images' seeds, the base's prompt embeddings and
    the arguments every diffusers call of the batch takes."""

    seeds: list[int]
    prompts: dict[str, Any]
    common: dict[str, Any]
    cancelled: Callable[[], bool] = lambda: False  # for a pass's work between steps (hires fix's upscale)

    def generators(self) -> list[Any]:
        """Fresh noise generators for the batch's seeds (each pass draws its noise anew, as the
        separate pipeline calls always did). CPU generators give the same noise on every device."""
        return [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds]


StepReport = Callable[[int, Any], bool]
"""``report(index, latents)`` after each step of a pass (``index`` from 0), made by the loop for
each pass: it reports progress and previews, raises :class:`~sdxl_server.errors.JobCancelled`,
and answers True when the pass should stop early (A1111's interrupt) and hand on its latents so far."""


class Pass(Protocol):
    """One pass of a generation."""

    name: str
    steps: int  # the denoising steps it runs, known before the first one
    takes_over_at: float | None  # for a pass that finishes the base's schedule: where it takes over

    def run(self, batch: Batch, latents: Any, report: StepReport) -> Any:
        """Denoise; return the latents the next pass (or the decoder) takes."""

    def info(self) -> dict[str, Any]:
        """What the metadata records of this pass (``{}`` for none)."""


class PassHost(Protocol):
    """What the passes may use of the engine that runs them."""

    pipe: Any  # the running model's base pipeline
    options: dict[str, Any]  # its memory and layout options
    refiner: Any  # :class:`..refiner.Refiner`

    def text_encoders_on(self, pipe: Any) -> AbstractContextManager[None]:
        """``pipe``'s text encoders on the device while a prompt is encoded."""

    def prompt_embeddings(self, params: GenerationParams) -> dict[str, Any]:
        """``params``' prompts as the pipeline's embeddings (A1111 syntax, any length)."""

    def mode_pipeline(self, mode: str) -> Any:
        """The running model's pipeline for ``mode`` (``img2img``: hires fix's second pass)."""

    def scheduler_for(self, sampler: str, schedule: str) -> Any:
        """The running model's scheduler for a sampler and schedule type of the request."""

    def sampler_name(self, sampler: str, scheduler: Any) -> str:
        """The sampler's label for the metadata."""

    def decode(self, latents: Any) -> list[Any]:
        """Latents to PIL images with the running model's VAE (tiled where memory is short)."""

    def upscale_image(self, image: Any, upscaler: str, cover: tuple[int, int], size: tuple[int, int],
                      cancelled: Callable[[], bool]) -> Any:
        """A PIL image upscaled by a pixel upscaler to ``cover``, cropped to ``size`` at the centre."""


@dataclass
class PassContext:
    """What a pass factory may read to build its pass."""

    params: GenerationParams
    scheduler: Any  # the base's scheduler, as set for this request
    host: PassHost
    inputs: Mapping[str, Any] = field(default_factory=dict)  # the decoded input images, by role


PassFactory = Callable[[PassContext], "Pass | None"]
"""Builds the pass a request asks for (loading what it needs), or None when it asks for none."""


def schedule_timesteps(scheduler: Any, steps: int, strength: float | None = None) -> list[float]:
    """The timesteps ``scheduler``'s kind runs for ``steps`` (after image to image's ``strength``
    skips the first ones, as diffusers' ``get_timesteps`` does), on a copy: the scheduler itself
    keeps its state."""
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(steps)
    timesteps = [float(t) for t in copy.timesteps]
    if strength is not None:
        timesteps = timesteps[len(timesteps) - denoising_steps(steps, strength) * copy.order:]
    return timesteps


def cutoff_timestep(scheduler: Any, fraction: float) -> int:
    """The timestep where ``fraction`` of the schedule is done (diffusers' ``denoising_end``)."""
    train = scheduler.config.num_train_timesteps
    return int(round(train - fraction * train))


def diffusers_step_end(report: StepReport, between: Callable[[Any, int], None] | None = None) -> Callable[..., dict[str, Any]]:
    """``report`` as diffusers' ``callback_on_step_end``; when it answers True the pipeline
    skips its remaining steps and returns the latents so far. ``between(pipeline, index)``, when
    given, runs first (what changes before the next step). The one place a diffusers private
    attribute is touched: diffusers has no public way to stop a running call early."""

    def step_end(pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if between is not None:
            between(pipeline, index)
        if report(index, tensors["latents"]):
            pipeline._interrupt = True
        return {}

    return step_end
