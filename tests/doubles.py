"""Engines with faults injected into the real pipeline, for tests (no mocks of our own code)."""

from __future__ import annotations

import threading
import time

import torch

from sdxl_server.pipeline.engine import Engine


class GatedEngine(Engine):
    """A real engine whose generations wait at the start until the test opens the gate (or the
    job is cancelled)."""

    def __init__(self, settings):
        super().__init__(settings)
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()

    def generate(self, params, on_step, cancelled, **inputs):
        self.entered.release()
        _wait_until(lambda: self.gate.is_set() or cancelled())
        return super().generate(params, on_step, cancelled, **inputs)


def _wait_until(condition, limit_s: float = 60) -> None:
    """Worker-thread side of a double: poll ``condition`` (tests themselves never sleep)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the worker")
        time.sleep(0.005)


class FaultyUnetEngine(Engine):
    """A real engine whose UNet raises ``fault`` on its ``at_call``-th forward pass, once."""

    def __init__(self, settings, error: BaseException, at_call: int = 2):
        super().__init__(settings)
        self.fault, self.at_call = error, at_call

    def load(self):
        super().load()
        unet, forward, calls = self.pipe.unet, self.pipe.unet.forward, {"n": 0}

        def failing_forward(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == self.at_call:
                raise self.fault
            return forward(*args, **kwargs)

        unet.forward = failing_forward


class OverflowingVaeEngine(Engine):
    """A real engine whose VAE decoder output exceeds float16's range (like SDXL's original VAE)."""

    def load(self):
        super().load()
        with torch.no_grad():
            self.pipe.vae.decoder.conv_out.weight.mul_(1e5)


def cuda_out_of_memory() -> BaseException:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total capacity)")


class PausingEngine(Engine):
    """A real engine that, after reporting step ``pause_after``, waits until its job is cancelled
    (so a test can cancel a running job at a known step)."""

    def __init__(self, settings, pause_after: int = 2):
        super().__init__(settings)
        self.pause_after = pause_after

    def generate(self, params, on_step, cancelled, **inputs):
        def pausing(step, total, latents):
            on_step(step, total, latents)
            if step == self.pause_after:
                _wait_until(cancelled)

        return super().generate(params, pausing, cancelled, **inputs)


class SmallMemoryEngine(Engine):
    """A real engine whose UNet runs out of memory for more than one image at a time."""

    def load(self):
        super().load()
        forward = self.pipe.unet.forward

        def forward_one_image(sample, *args, **kwargs):
            if sample.shape[0] > 2:  # one image with classifier-free guidance is a batch of 2
                raise cuda_out_of_memory()
            return forward(sample, *args, **kwargs)

        self.pipe.unet.forward = forward_one_image
