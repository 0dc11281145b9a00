"""The SDXL refiner model: where it comes from, loading it on first use (sharing the running base's
``text_encoder_2`` and VAE), where its UNet lives, and its schedulers. How a request's steps split
between base and refiner is the refiner pass's (:mod:`.passes.refiner`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


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
        self._schedulers: dict[tuple[str, str], Any] = {}

    def ensure(self, base: Any, options: dict[str, Any]) -> Any:
        """The loaded refiner; raises :class:`Unusable` when none is configured and
        :class:`ModelUnavailable` when it does not load."""
        from ..errors import ModelUnavailable, Unusable

        if self.source is None:
            raise Unusable("no refiner is configured (REFINER_ID)", fields={"refiner": ["No refiner is configured."]})
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

    def scheduler(self, name: tuple[str, str], base_scheduler: Any) -> Any:
        """A scheduler of the request's (sampler, schedule) for the refiner (its own instance: they keep state)."""
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
