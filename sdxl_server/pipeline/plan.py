"""A generation as a plan of passes, and the one loop that runs it.

:func:`build_plan` turns a request into its passes (the base, then whatever :data:`LATER_PASSES`
returns for it), each with its step count, before the first step. :class:`PlanRunner` runs them
batch by batch: progress over all passes, previews, cancel, A1111's interrupt (the running pass
hands on its latents so far and the later passes are skipped), decoding, and the fall back to one
image at a time when a batch runs out of memory are written here once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import JobCancelled, OutOfMemory
from ..params import MAX_SEED, GenerationParams
from .modes import ModeRun
from .passes import Batch, Pass, PassContext, PassFactory, StepReport
from .passes.base import BasePass
from .passes.hires import hires_pass
from .passes.refiner import refiner_pass

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, Any], None]
"""``on_step(step, total_steps, latents)``; ``step`` counts completed steps from 1."""

# The passes after the base, in the order they run: a new pass is one factory here. The refiner
# belongs to the first pass (as in A1111): hires fix upscales and repaints what it made.
LATER_PASSES: list[PassFactory] = [refiner_pass, hires_pass]


@dataclass
class Generation:
    """What one generation produced: PIL images and facts for the metadata."""

    images: list[Any]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """The passes of one request, and what happens to each decoded image (inpainting's overlay)."""

    passes: list[Pass]
    finish: Callable[[Any], Any]
    sampler: str

    @property
    def steps(self) -> int:
        """Steps per batch, over every pass."""
        return sum(step_pass.steps for step_pass in self.passes)


def build_plan(context: PassContext, mode: ModeRun, sampler: str) -> Plan:
    """The passes for ``context.params``: later passes first built (one may load its model), then
    the base, which stops where a later pass takes over the schedule."""
    later = [made for factory in LATER_PASSES if (made := factory(context)) is not None]
    end = next((made.takes_over_at for made in later if made.takes_over_at is not None), None)
    return Plan([BasePass.build(context, mode, end), *later], mode.finish, sampler)


@dataclass
class Progress:
    """Steps done over every batch and pass, and where A1111's interrupt stopped the job."""

    on_step: StepCallback
    cancelled: Callable[[], bool]
    stop_early: Callable[[], bool]
    total: int
    done: int = 0
    batch_start: int = 0  # ``done`` when the running batch began
    stopped_at: tuple[int, int] | None = None  # (the step in its batch, the index of its first image)

    def reporter(self, first_image: int) -> StepReport:
        """The step report of the pass starting now."""
        start = self.done

        def report(index: int, latents: Any) -> bool:
            if self.cancelled():
                raise JobCancelled("the job was cancelled")
            self.on_step(start + index + 1, self.total, latents)
            if self.stopped_at is None and self.stop_early():
                self.stopped_at = (start - self.batch_start + index + 1, first_image)
                return True
            return False

        return report


@dataclass
class PlanRunner:
    """Runs plans with one engine's helpers: its prompt encoding, decoder, clock and error translation."""

    encode_prompts: Callable[[GenerationParams], dict[str, Any]]
    decode: Callable[[Any], tuple[list[Any], bool]]  # latents -> (PIL images, whether the VAE was upcast)
    clock: Callable[[], Any]
    seconds: Callable[[Any, Any], float]
    translated: Callable[[GenerationParams], contextlib.AbstractContextManager[None]]

    def run(
        self, plan: Plan, params: GenerationParams, on_step: StepCallback, cancelled: Callable[[], bool],
        stop_early: Callable[[], bool] = lambda: False,
    ) -> Generation:
        """``params.num_images`` images in one batch, or one at a time if the batch runs out of
        memory. Image ``i`` uses seed ``seed + i``, so each can be redone alone."""
        try:
            return self._batches(plan, params, [params.num_images], on_step, cancelled, stop_early)
        except OutOfMemory:
            if params.num_images == 1:
                raise
            log.warning("a batch of %d ran out of memory; generating one image at a time", params.num_images)
            return self._batches(plan, params, [1] * params.num_images, on_step, cancelled, stop_early)

    def _batches(
        self, plan: Plan, params: GenerationParams, sizes: list[int], on_step: StepCallback,
        cancelled: Callable[[], bool], stop_early: Callable[[], bool],
    ) -> Generation:
        seeds = [(params.seed + i) % (MAX_SEED + 1) for i in range(params.num_images)]
        progress = Progress(on_step, cancelled, stop_early, plan.steps * len(sizes))
        images: list[Any] = []
        upcast, inference_s, decode_s = False, 0.0, 0.0
        with self.translated(params):
            prompts = self.encode_prompts(params)
        for size in sizes:
            batch = Batch(seeds[len(images):len(images) + size], prompts, {
                "num_inference_steps": params.steps, "guidance_scale": params.guidance_scale,
                "num_images_per_prompt": size, "output_type": "latent",
            }, cancelled)
            started = self.clock()
            with self.translated(params), torch.inference_mode():
                latents = self._passes(plan, batch, progress, len(images))
                if cancelled():
                    raise JobCancelled("the job was cancelled")
                denoised = self.clock()  # on a GPU, marks on its stream: the host never waits for them
                decoded, batch_upcast = self.decode(latents)
                finished = self.clock()
            images.extend(plan.finish(image) for image in decoded)
            upcast = upcast or batch_upcast
            inference_s += self.seconds(started, denoised)
            decode_s += self.seconds(denoised, finished)
            if progress.stopped_at is not None:
                break
        return Generation(images, self._info(plan, seeds, upcast, inference_s, decode_s, progress))

    @staticmethod
    def _passes(plan: Plan, batch: Batch, progress: Progress, first_image: int) -> Any:
        """One batch through every pass (after an interrupt, the later passes are skipped)."""
        progress.batch_start = progress.done
        latents = None
        for step_pass in plan.passes:
            if progress.stopped_at is not None:
                break
            latents = step_pass.run(batch, latents, progress.reporter(first_image))
            progress.done += step_pass.steps
        return latents

    @staticmethod
    def _info(plan: Plan, seeds: list[int], upcast: bool, inference_s: float, decode_s: float,
              progress: Progress) -> dict[str, Any]:
        info: dict[str, Any] = {
            "sampler": plan.sampler, "seeds": seeds, "vae_upcast": upcast,
            "inference_s": round(inference_s, 4), "decode_s": round(decode_s, 4),
        }
        for step_pass in plan.passes:
            info.update(step_pass.info())
        if progress.stopped_at is not None:
            info["stopped_at"], info["stopped_from"] = progress.stopped_at
        return info

