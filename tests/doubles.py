"""Engines with faults injected into the real pipeline, for tests (no mocks of our own code)."""

from __future__ import annotations

import errno
import threading
import time

import torch

from sdxl_server.jobs.blobs import LocalBlobs
from sdxl_server.jobs.outputs import OutputStore
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
    or asked to stop early (so a test can cancel or interrupt a running job at a known step)."""

    def __init__(self, settings, pause_after: int = 2):
        super().__init__(settings)
        self.pause_after = pause_after

    def generate(self, params, on_step, cancelled, **inputs):
        def pausing(step, total, latents):
            on_step(step, total, latents)
            if step == self.pause_after:
                _wait_until(lambda: cancelled() or inputs.get("stop_early", lambda: False)())

        return super().generate(params, pausing, cancelled, **inputs)

    def upscale(self, params, on_step, cancelled, inputs):
        def pausing(step, total, preview):  # an upscale job's steps are its tiles
            on_step(step, total, preview)
            if step == self.pause_after:
                _wait_until(cancelled)

        return super().upscale(params, pausing, cancelled, inputs)


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


class FileGatedEngine(Engine):
    """A real engine that holds jobs whose prompt starts with "hold" after step ``hold_at`` until
    the file ``gate`` exists (or the job is cancelled): a gate that works across processes, for
    Ray replicas."""

    def __init__(self, settings, gate: str, hold_at: int = 2):
        super().__init__(settings)
        self.gate, self.hold_at = gate, hold_at

    def generate(self, params, on_step, cancelled, **options):
        def step(index, total, latents):
            on_step(index, total, latents)
            if index == self.hold_at and params.prompt.startswith("hold"):
                import os

                _wait_until(lambda: os.path.exists(self.gate) or cancelled(), limit_s=120)

        return super().generate(params, step, cancelled, **options)


class WatchedLatents(torch.Tensor):
    """A view of the latents that records every operation on it (``refuse``: raises instead), so a
    test can prove which steps of the real callback path read the latents' values."""

    reads: list[tuple[int, str]]
    step = 0
    refuse = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", repr(func))
        cls.reads.append((cls.step, name))
        if cls.refuse:
            raise AssertionError(f"the step callback touched the latents at step {cls.step} ({name})")
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class WatchedLatentsEngine(Engine):
    """A real engine whose pipeline hands the step callback :class:`WatchedLatents` (the
    denoising itself goes on with the real tensor)."""

    refuse = False

    def __init__(self, settings):
        super().__init__(settings)
        self.watched = type("Watched", (WatchedLatents,), {"reads": [], "refuse": self.refuse})

    def load(self):
        super().load()
        pipe, watched = self.pipe, self.watched
        call = type(pipe).__call__

        def watching_call(self_, *args, callback_on_step_end=None, **kwargs):
            def step_end(pipeline, index, timestep, tensors):
                watched.step = index + 1
                view = tensors["latents"].as_subclass(watched)
                return callback_on_step_end(pipeline, index, timestep, {**tensors, "latents": view})

            return call(self_, *args, callback_on_step_end=step_end, **kwargs)

        pipe.__class__ = type(f"Watched{type(pipe).__name__}", (type(pipe),), {"__call__": watching_call})


class UntouchableLatentsEngine(WatchedLatentsEngine):
    """:class:`WatchedLatentsEngine` whose latents raise on any read."""

    refuse = True


class SyncCheckingEngine(Engine):
    """A real engine that turns on CUDA's sync debug mode ("error") from the first step's callback
    to the last one's, so any host-device synchronisation between steps fails the generation."""

    def generate(self, params, on_step, cancelled, **options):
        def checked(step, total, latents):
            if step == 1:
                torch.cuda.set_sync_debug_mode("error")
            try:
                on_step(step, total, latents)
            finally:
                if step == total:
                    torch.cuda.set_sync_debug_mode("default")

        try:
            return super().generate(params, checked, cancelled, **options)
        finally:
            torch.cuda.set_sync_debug_mode("default")


class GatedOutputStore(OutputStore):
    """A real output store whose writes wait until the test opens the gate."""

    def __init__(self, root):
        super().__init__(root)
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()

    def write_outputs(self, output_id, image, meta):
        self.entered.release()
        _wait_until(self.gate.is_set)
        return super().write_outputs(output_id, image, meta)


class FullDiskBlobs(LocalBlobs):
    """Real local blobs on a disk that fills up while the first PNG of ``full_for`` is written."""

    def __init__(self, root, full_for: set[str]):
        super().__init__(root)
        self.full_for = full_for

    def _write_atomic(self, path, write):
        if path.stem[:32] not in self.full_for:
            return super()._write_atomic(path, write)

        def write_then_fill(f):
            write(f)
            raise OSError(errno.ENOSPC, "No space left on device")

        return super()._write_atomic(path, write_then_fill)


class FullDiskOutputStore(OutputStore):
    """A real output store on a disk that fills up while the first PNG of ``full_for`` is written."""

    def __init__(self, root, full_for: set[str]):
        super().__init__(root, blobs=FullDiskBlobs(root, full_for))
        self.full_for = full_for

class UpscalePausingEngine(Engine):
    """A real engine whose pixel upscaling (hires fix's upscale phase) waits, once it has begun,
    until its job is cancelled: a test cancels a job between its two passes."""

    def __init__(self, settings):
        super().__init__(settings)
        self.upscaling = threading.Event()

    def upscale_image(self, image, upscaler, cover, size, cancelled):
        self.upscaling.set()
        _wait_until(cancelled)
        return super().upscale_image(image, upscaler, cover, size, cancelled)
