"""The engine: owns the loaded pipeline, its state, and one generation.

Everything here runs on the single worker thread that owns the pipeline (see
:mod:`sdxl_server.jobs.queue`); :meth:`Engine.describe` alone is safe from the event loop.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import package_version
from ..config import Settings
from ..errors import GenerationFailed, JobCancelled, ModelUnavailable, OutOfMemory, short_message
from ..params import MAX_SEED, GenerationParams
from .decode import decode_latents
from .loading import apply_memory_options, load_pipeline
from .modes import ModePipelines, ModeRun, prepare_run
from .refiner import Refiner, plan
from .runtime import Runtime, resolve_runtime
from .schedulers import make_scheduler, sampler_label
from .sources import fix_hint, resolve_model_source

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, "torch.Tensor"], None]
"""``on_step(step, total_steps, latents)``; ``step`` counts completed steps from 1."""

@dataclass
class Generation:
    """What one pipeline call produced: PIL images and facts for the metadata."""

    images: list[Any]
    info: dict[str, Any] = field(default_factory=dict)


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Engine:
    """Owns the diffusers pipeline. Every method but :meth:`describe` runs on the worker thread."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or resolve_runtime(settings)
        self.source = resolve_model_source(settings)
        self.pipe: Any = None
        self.state = "not_loaded"  # not_loaded -> loading -> ready | failed
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.options: dict[str, Any] = {}
        self._schedulers: dict[str, Any] = {}
        self._default_scheduler: Any = None
        self._modes: ModePipelines | None = None
        self.refiner = Refiner(settings, self.runtime)

    # -- loading ----------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.source.model_id

    def ensure_loaded(self) -> None:
        """Load the model if it is not loaded; raise :class:`ModelUnavailable` if it cannot be."""
        if self.state == "ready":
            return
        if self.state == "failed":
            raise ModelUnavailable(self.error or "the model failed to load")
        self.load()

    def load(self) -> None:
        """Load the pipeline and apply the memory options. Records the failure before raising it."""
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.state, self.error = "loading", None
        log.info("loading %s model %s (from %s) on %s/%s", self.source.kind, self.source.location,
                 self.source.origin, self.runtime.device, self.runtime.dtype)
        started = time.perf_counter()
        try:
            pipe = self._load_pipeline()
            self._apply_options(pipe)
        except Exception as exc:  # noqa: BLE001 - any failure is reported on /health, not raised at start-up
            self.state = "failed"
            self.error = (
                f"could not load {self.source.kind.replace('_', ' ')} model {self.source.location!r} "
                f"(chosen by {self.source.origin}): {short_message(exc)}. Fix: {fix_hint(self.source, self.settings)}"
            )
            log.error("%s", self.error)
            self._free()
            raise ModelUnavailable(self.error) from exc
        self.pipe = pipe
        self._modes = ModePipelines(pipe)
        self._default_scheduler = pipe.scheduler
        self.load_seconds = time.perf_counter() - started
        self.state = "ready"
        log.info("model ready in %.1fs: %s", self.load_seconds, self.options)
        if self.settings.preload and self.refiner.source is not None:
            with contextlib.suppress(ModelUnavailable):  # recorded on /health; the base serves without it
                self.refiner.load(pipe, self.options)

    def _load_pipeline(self) -> Any:
        return load_pipeline(self.settings, self.runtime, self.source)

    def _apply_options(self, pipe: Any) -> None:
        self.options = apply_memory_options(pipe, self.settings, self.runtime)

    def _free(self) -> None:
        self.pipe, self._modes = None, None
        self.refiner.close()
        gc.collect()
        if self.runtime.on_cuda:
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Release the pipeline and its device memory."""
        if self.pipe is not None:
            self._free()
        self.state = "not_loaded"

    # -- generation -------------------------------------------------------------

    def _scheduler(self, name: str):
        if name == "default":
            return self._default_scheduler
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self._default_scheduler.config)
        return self._schedulers[name]

    def generate(
        self, params: GenerationParams, on_step: StepCallback, cancelled: Callable[[], bool],
        inputs: Mapping[str, Any] | None = None,
    ) -> Generation:
        """Run one request: ``params.num_images`` images in one pipeline call, or one at a time if
        the batch runs out of memory. Image ``i`` uses seed ``seed + i``, so each can be redone
        alone. ``inputs`` holds the decoded ``init_image`` and ``mask`` of image to image and
        inpainting (see :mod:`.modes`). Raises :class:`JobCancelled` (checked every step and
        before decoding), :class:`OutOfMemory` (after freeing the cache) or :class:`GenerationFailed`."""
        self.ensure_loaded()
        with self._failures_translated(params):
            run = prepare_run(self._modes, params, inputs)
        run.pipe.scheduler = self._scheduler(params.scheduler)  # on the pipeline that actually runs
        if params.refiner != "none":
            refiner = self.refiner.ensure(self.pipe, self.options)
            refiner.scheduler = self.refiner.scheduler(params.scheduler, run.pipe.scheduler)
            run.refiner, run.plan = refiner, plan(params, run.pipe.scheduler)
        try:
            return self._generate_in_batches(params, [params.num_images], on_step, cancelled, run)
        except OutOfMemory:
            if params.num_images == 1:
                raise
            log.warning("a batch of %d ran out of memory; generating one image at a time", params.num_images)
            return self._generate_in_batches(params, [1] * params.num_images, on_step, cancelled, run)

    def _generate_in_batches(
        self, params: GenerationParams, batches: list[int], on_step: StepCallback, cancelled: Callable[[], bool],
        run: ModeRun,
    ) -> Generation:
        pipe = run.pipe
        images: list[Any] = []
        seeds = [(params.seed + i) % (MAX_SEED + 1) for i in range(params.num_images)]
        upcast, inference_s, decode_s, steps_done = False, 0.0, 0.0, 0

        def step_end(pipeline, index: int, timestep, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled():
                raise JobCancelled("the job was cancelled")
            per_batch = run.plan.total if run.plan else pipeline.num_timesteps  # base and refiner count as one
            on_step(steps_done + index + 1, per_batch * len(batches), tensors["latents"])
            return {}

        def generators(size: int) -> list[Any]:
            # CPU generators give the same noise for a seed on every device.
            return [torch.Generator("cpu").manual_seed(seeds[len(images) + i]) for i in range(size)]

        for size in batches:
            started = time.perf_counter()
            with self._failures_translated(params), torch.inference_mode():
                common = {
                    "prompt": params.prompt, "negative_prompt": params.negative_prompt or None,
                    "num_inference_steps": params.steps, "guidance_scale": params.guidance_scale,
                    "num_images_per_prompt": size, "output_type": "latent", "callback_on_step_end": step_end,
                }
                base_arguments = run.plan.base_arguments if run.plan else {}
                latents = pipe(**common, **run.arguments, **base_arguments, generator=generators(size)).images
                steps_done += pipe.num_timesteps
                if run.refiner is not None:
                    latents = run.refiner(**common, image=latents, **run.plan.refiner_arguments,
                                          generator=generators(size)).images
                    steps_done += run.refiner.num_timesteps
                if cancelled():
                    raise JobCancelled("the job was cancelled")
                if self.runtime.on_cuda:
                    torch.cuda.synchronize()  # so the inference/decode split is true on a GPU
                denoised = time.perf_counter()
                decoded, batch_upcast = decode_latents(self.pipe, latents)
            images.extend(run.finish(image) for image in decoded)
            upcast = upcast or batch_upcast
            inference_s += denoised - started
            decode_s += time.perf_counter() - denoised
        info = {
            "sampler": sampler_label(params.scheduler, pipe.scheduler),
            "seeds": seeds,
            "vae_upcast": upcast,
            "inference_s": round(inference_s, 4),
            "decode_s": round(decode_s, 4),
        }
        if run.refiner is not None:
            info["refiner"] = self.refiner.source.model_id
        return Generation(images=images, info=info)

    @contextlib.contextmanager
    def _failures_translated(self, params: GenerationParams) -> Iterator[None]:
        """Turn what the pipeline raises into the errors a client sees; free memory after OOM."""
        try:
            yield
        except (JobCancelled, OutOfMemory):
            raise
        except Exception as exc:
            if _is_out_of_memory(exc):
                self._recover_memory()
                raise OutOfMemory(
                    f"the {self.runtime.device} device ran out of memory at {params.width}x{params.height}"
                    f"{f' x{params.num_images}' if params.num_images > 1 else ''}: try a smaller size "
                    "(e.g. 768x768) or fewer images, enable VAE_TILING or CPU_OFFLOAD=model, or close other GPU programs"
                ) from exc
            log.exception("generation failed")
            raise GenerationFailed(f"generation failed: {short_message(exc)}") from exc
        finally:
            if self.pipe is not None and hasattr(self.pipe, "maybe_free_model_hooks"):
                self.pipe.maybe_free_model_hooks()

    def _recover_memory(self) -> None:
        gc.collect()
        if self.runtime.on_cuda:
            torch.cuda.empty_cache()
    def gpu_memory_allocated(self) -> float:
        """Bytes held by torch tensors on the CUDA device (0 elsewhere)."""
        if not self.runtime.on_cuda:
            return 0.0
        return float(torch.cuda.memory_allocated(torch.device(self.runtime.device)))

    def describe(self) -> dict[str, Any]:
        """What /health shows about the model and device (safe to call from the event loop)."""
        gpu: dict[str, Any] | None = None
        if self.runtime.on_cuda:
            index = torch.device(self.runtime.device).index or 0
            gpu = {
                "name": torch.cuda.get_device_name(index),
                "memory_total": torch.cuda.get_device_properties(index).total_memory,
                "memory_allocated": torch.cuda.memory_allocated(index),
            }
        return {
            "cuda_available": self.runtime.cuda_available,
            "device": self.runtime.device,
            "dtype": self.runtime.dtype,
            "gpu": gpu,
            "model": {
                "id": self.model_id,
                "source": self.source.kind,
                "location": self.source.location,
                "origin": self.source.origin,
                "vae": self.source.vae,
                "tiny": self.source.kind == "tiny",
                "state": self.state,
                "loaded": self.state == "ready",
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 2),
                "error": self.error,
            },
            "refiner": self.refiner.describe(),
            "attention": self.options.get("attention"),
            "options": self.options,
            "versions": {"torch": torch.__version__, "diffusers": package_version("diffusers")},
        }
