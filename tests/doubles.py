"""Engines with faults injected into the real pipeline, for tests (no mocks of our own code)."""

from __future__ import annotations

import threading

import torch

from sdxl_server.engine import Engine


class GatedEngine(Engine):
    """A real engine whose generations wait at the start until the test opens the gate."""

    def __init__(self, settings):
        super().__init__(settings)
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()

    def generate(self, params, on_step, cancelled):
        self.entered.release()
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return super().generate(params, on_step, cancelled)


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
