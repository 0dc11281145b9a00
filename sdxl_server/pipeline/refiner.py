"""The SDXL refiner's part in one generation: how the steps are split between base and refiner,
and the arguments each call gets.

``ensemble``: the base stops at ``refiner_switch_at`` of the schedule (diffusers'
``denoising_end``) and the refiner finishes the same latents (``denoising_start``), so together
they run the request's schedule once. ``image``: the base runs in full and the refiner repaints
its result image to image at ``refiner_strength``. The counts are worked out before the run, on
a copy of the scheduler, so progress has one true total from the first step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..params import GenerationParams, denoising_steps


@dataclass(frozen=True)
class RefinerPlan:
    base_arguments: dict[str, Any] = field(default_factory=dict)
    refiner_arguments: dict[str, Any] = field(default_factory=dict)
    base_steps: int = 0
    refiner_steps: int = 0

    @property
    def total(self) -> int:
        return self.base_steps + self.refiner_steps


def _timesteps(scheduler: Any, params: GenerationParams, with_strength: bool = True) -> list[float]:
    """The timesteps of ``params``' schedule (for the base: after image to image's ``strength``)."""
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(params.steps)
    timesteps = [float(t) for t in copy.timesteps]
    if with_strength and params.init_image is not None:
        timesteps = timesteps[len(timesteps) - denoising_steps(params.steps, params.strength) * copy.order:]
    return timesteps


def plan(params: GenerationParams, scheduler: Any) -> RefinerPlan:
    """How ``params`` splits between base and refiner, with ``scheduler`` (the base's, as set)."""
    if params.refiner == "ensemble":
        train = scheduler.config.num_train_timesteps
        cutoff = int(round(train - params.refiner_switch_at * train))
        base = sum(1 for t in _timesteps(scheduler, params) if t >= cutoff)
        refiner = sum(1 for t in _timesteps(scheduler, params, with_strength=False) if t < cutoff)
        return RefinerPlan({"denoising_end": params.refiner_switch_at}, {"denoising_start": params.refiner_switch_at},
                           base, refiner)
    base = len(_timesteps(scheduler, params))
    return RefinerPlan({}, {"strength": params.refiner_strength}, base, denoising_steps(params.steps, params.refiner_strength))


class Refiner:
    """The refiner model, if one is configured: where it comes from, its state, the pipeline.

    It is loaded on the first request that asks (or with the base at start-up under ``PRELOAD``),
    sharing the running base's ``text_encoder_2`` and VAE (after a model switch, the new one's: the
    refiner is not loaded again). Runs on the worker thread, like the engine."""

    def __init__(self, settings: Any, runtime: Any) -> None:
        from .sources import resolve_refiner_source

        self.settings, self.runtime = settings, runtime
        self.source = resolve_refiner_source(settings)
        self.pipe: Any = None
        self.state = "not_loaded" if self.source else "not_configured"
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.placement: tuple[str, str] | None = None  # where its UNet lives, and why
        self._schedulers: dict[str, Any] = {}

    def ensure(self, base: Any, options: dict[str, Any]) -> Any:
        """The loaded refiner; raises :class:`ValidationFailed` when none is configured and
        :class:`ModelUnavailable` when it does not load."""
        from ..errors import ModelUnavailable, ValidationFailed

        if self.source is None:
            raise ValidationFailed("no refiner is configured (REFINER_ID)", fields={"refiner": ["No refiner is configured."]})
        if self.state == "failed":
            raise ModelUnavailable(self.error or "the refiner failed to load")
        if self.pipe is None:
            self.load(base, options)
        else:
            self.share(base, options)
        return self.pipe

    def share(self, base: Any, options: dict[str, Any]) -> None:
        """Borrow the running model's text encoder 2 and VAE (the refiner has none of its own),
        after a model switch: not the model it was loaded beside, which may be parked or freed."""
        if self.pipe is None or base is None:
            return
        if self.pipe.text_encoder_2 is base.text_encoder_2 and self.pipe.vae is base.vae:
            return
        from .loading import place_refiner

        self.pipe.register_modules(text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2, vae=base.vae)
        if self.placement is not None and self.placement[0] == "offloaded":
            place_refiner(self.pipe, self.settings, self.runtime, options, "offloaded")  # hooks on the new modules

    def unshare(self) -> None:
        """Let go of the running model's modules while models switch (a dropped model is freed)."""
        if self.pipe is not None:
            self.pipe.register_modules(text_encoder_2=None, tokenizer_2=None, vae=None)

    def load(self, base: Any, options: dict[str, Any]) -> None:
        import logging
        import time

        from ..errors import ModelUnavailable, short_message
        from .loading import load_refiner, place_refiner
        from .sources import refiner_fix_hint

        log = logging.getLogger(__name__)
        self.state, started = "loading", time.perf_counter()
        log.info("loading refiner %s (from %s)", self.source.location, self.source.origin)
        try:
            pipe = load_refiner(self.settings, self.runtime, self.source, base)
            self.placement = self._placement(options)
            place_refiner(pipe, self.settings, self.runtime, options, self.placement[0])
        except Exception as exc:  # noqa: BLE001 - reported on /health and to the request
            self.state = "failed"
            self.error = (f"could not load refiner {self.source.location!r} (chosen by {self.source.origin}): "
                          f"{short_message(exc)}. Fix: {refiner_fix_hint(self.source, self.settings)}")
            log.error("%s", self.error)
            raise ModelUnavailable(self.error) from exc
        self.pipe, self.state = pipe, "ready"
        self.load_seconds = time.perf_counter() - started
        log.info("refiner ready in %.1fs", self.load_seconds)

    def _placement(self, options: dict[str, Any]) -> tuple[str, str]:
        import torch

        from .memory import refiner_placement

        total = None
        if self.runtime.on_cuda:
            total = torch.cuda.get_device_properties(torch.device(self.runtime.device).index or 0).total_memory
        return refiner_placement(total, self.runtime.dtype, options.get("cpu_offload", "none"))

    @contextlib.contextmanager
    def running(self, base: Any) -> Iterator[None]:
        """While the refiner runs: with ``swapped`` placement its UNet takes the base's place on the
        device (the base's waits on the CPU), and they change back after, whatever happens."""
        if self.placement is None or self.placement[0] != "swapped":
            yield
            return
        base.unet.to("cpu")
        self.pipe.unet.to(self.runtime.device)
        try:
            yield
        finally:
            self.pipe.unet.to("cpu")
            base.unet.to(self.runtime.device)

    def scheduler(self, name: str, base_scheduler: Any) -> Any:
        """A scheduler of the request's kind for the refiner (its own instance: they keep state)."""
        if name not in self._schedulers:
            self._schedulers[name] = type(base_scheduler).from_config(base_scheduler.config)
        return self._schedulers[name]

    def close(self) -> None:
        self.pipe = None
        if self.source is not None:
            self.state = "not_loaded"

    def describe(self) -> dict[str, Any] | None:
        if self.source is None:
            return None
        return {
            "id": self.source.model_id, "source": self.source.kind, "location": self.source.location,
            "origin": self.source.origin, "state": self.state, "loaded": self.state == "ready",
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 2), "error": self.error,
            "placement": None if self.placement is None else {"unet": self.placement[0], "reason": self.placement[1]},
        }
