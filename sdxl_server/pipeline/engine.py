"""The engine: owns the loaded pipeline, its state, and one generation.

Everything here runs on the single worker thread that owns the pipeline (see
:mod:`sdxl_server.jobs.queue`); :meth:`Engine.describe` alone is safe from the event loop.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .. import package_version
from ..config import Settings
from ..errors import ApiError, GenerationFailed, ModelUnavailable, OutOfMemory, short_message
from ..params import GenerationParams
from .compiling import Compilation, apply_layout_options
from .annotator_files import AnnotatorCatalog
from .annotators import Annotators
from .controlnet_files import ControlNetCatalog
from .controlnets import ControlNetCache
from .ip_adapter_files import IpAdapterCatalog
from .ip_adapters import IpAdapters
from .decode import decode_latents, is_out_of_memory
from .embedding_files import EmbeddingCatalog
from .embeddings import empty_listing, load_embeddings
from .embeddings import listing as embedding_listing
from .hires_upscale import center_crop
from .loading import apply_memory_options, load_pipeline
from .lora_files import LoraCatalog
from .loras import LoraAdapters
from .memory import MemoryPlan, plan_memory
from .model_catalog import ModelCatalog
from .modes import ModePipelines, prepare_run
from .passes import PassContext
from .plan import Generation, PlanRunner, StepCallback, build_plan
from .prompt_encoding import count_prompt_tokens, encode_request_prompts
from .refiner import Refiner
from .switching import LoadedModel, ModelCache
from .runtime import Runtime, resolve_runtime
from .schedulers import make_scheduler, sampler_label
from .sources import fix_hint, resolve_model_source
from .text_encoders import text_encoders_on
from .upscale_job import run_upscale_job
from .upscalers import engine_upscalers

log = logging.getLogger(__name__)


def _seconds(start: Any, end: Any) -> float:
    """Seconds between two :meth:`Engine._clock` marks (CUDA events once both have passed:
    the decode's copy to the host has waited for them already)."""
    if isinstance(start, float):
        return end - start
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


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
        self._schedulers: dict[tuple[str, str], Any] = {}
        self._default_scheduler: Any = None
        # The catalogs the API checks requests against too (one each, see api/contexts.py).
        self.models = ModelCatalog(settings)
        self.lora_files = LoraCatalog(settings.lora_dir)
        self.loras = LoraAdapters(self.lora_files, settings.lora_cache)
        self.embedding_files = EmbeddingCatalog(settings.embeddings_dir)
        self.controlnet_files = ControlNetCatalog(settings.controlnet_dir)
        self.ip_adapter_files = IpAdapterCatalog(settings.ip_adapter_dir)
        self.ip_adapters = IpAdapters(self.ip_adapter_files)
        self.annotators = Annotators(AnnotatorCatalog(settings.annotator_dir), settings.annotator_device)
        self.controlnets = ControlNetCache(self.controlnet_files, settings.controlnet_cache, self.runtime.device,
                                           self.runtime.torch_dtype)
        self.active = self.models.default_name
        movable = self.runtime.on_cuda and settings.cpu_offload == "none"
        self.cached = ModelCache(settings.model_cache, settings.model_ram_cache, self.runtime.device, movable)
        self.switch_seconds: dict[str, float] = {}
        self._counting: tuple[Any, Any] = (None, None)  # (the pipe's tokenizer, the copy that counts)
        self.compilation = Compilation(settings)
        self.memory_plan: MemoryPlan | None = None
        self._modes: ModePipelines | None = None
        self.refiner = Refiner(settings, self.runtime)
        # Upscaler models: on the GPU between jobs only under the `high` profile (one model at a time otherwise).
        self.upscalers = engine_upscalers(settings, self.runtime.device, self.runtime.dtype, self.source.kind == "tiny",
                                          lambda: self.memory_plan is None or self.memory_plan.profile == "high")
        self.upscaler_catalog = self.upscalers.catalog

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
            load_embeddings(pipe, self.embedding_files)  # before the offload hooks; a bad file is listed, not raised
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
        self._default_scheduler = pipe.scheduler
        self._compile_and_warm_up()
        self.load_seconds = time.perf_counter() - started
        self.upscaler_catalog.entries()  # the upscaler files read (spandrel imported) now, not by the page's first listing
        self.state = "ready"
        log.info("model ready in %.1fs: %s", self.load_seconds, self.options)
        if self.settings.preload and self.refiner.source is not None:
            with contextlib.suppress(ModelUnavailable):  # recorded on /health; the base serves without it
                self.refiner.ensure(pipe, self.options)  # loaded once; after a switch, shared anew

    def _load_pipeline(self) -> Any:
        return load_pipeline(self.settings, self.runtime, self.source)

    def _apply_options(self, pipe: Any) -> None:
        self.memory_plan = plan_memory(self.settings, self._gpu_total_memory(), self.runtime.dtype)
        log.info("memory profile %s (%s)%s", self.memory_plan.profile, self.memory_plan.reason,
                 f"; overridden by {', '.join(self.memory_plan.overrides)}" if self.memory_plan.overrides else "")
        self.options = apply_memory_options(pipe, self.settings, self.runtime, self.memory_plan)
        self.controlnets.park = self.memory_plan.cpu_offload != "none"  # only what runs sits on the GPU
        self.options.update(apply_layout_options(pipe, self.settings, self.options["attention"]))

    def _gpu_total_memory(self) -> int | None:
        if not self.runtime.on_cuda:
            return None
        return torch.cuda.get_device_properties(torch.device(self.runtime.device).index or 0).total_memory

    def prompt_embeddings(self, params: GenerationParams) -> dict[str, Any]:
        """The prompts as embeddings (A1111 syntax, any length); with TEXT_ENCODER_OFFLOAD the text
        encoders visit the device only for this."""
        with self.text_encoders_on(self.pipe):
            return encode_request_prompts(self.pipe, params, self.settings.prompt_syntax)

    def text_encoders_on(self, pipe: Any) -> contextlib.AbstractContextManager[None]:
        """``pipe``'s text encoders on the device for a while (parked on the CPU under TEXT_ENCODER_OFFLOAD)."""
        offload = self.memory_plan is not None and self.memory_plan.text_encoder_offload
        return text_encoders_on(pipe, self.runtime.device) if offload else contextlib.nullcontext()

    def _compile_and_warm_up(self) -> None:
        """COMPILE: compile, then generate once at the default size (the first compile, or a read
        of the compile cache, happens here rather than in a client's request)."""
        if not self.compilation.start(self.pipe, self.options.get("cpu_offload", "none")):
            return
        settings = self.settings
        warm_up = GenerationParams(
            prompt="warm-up", negative_prompt="", width=settings.default_width, height=settings.default_height,
            steps=2, guidance_scale=settings.default_guidance, seed=0,
        )
        try:
            self._run(warm_up, lambda *_: None, lambda: False, None)
        except Exception as exc:  # noqa: BLE001 - a compiler problem leaves the server eager, not down
            self.compilation.failed(exc)
        else:
            self.compilation.finished()

    def _free(self, collect: bool = True) -> None:
        self.pipe, self._modes = None, None
        self.loras.forget()
        self.ip_adapters.forget()
        self.refiner.close()
        if collect:
            self._recover_memory()

    def close(self) -> None:
        """Release the pipeline and its device memory. On the CPU there is none: reference counting
        frees the host memory, and a full collection (~0.2 s, walking every object the libraries
        made) is not worth paying at every shutdown."""
        if self.pipe is not None:
            self._free(collect=self.runtime.device != "cpu")
        self.upscalers.close()
        self.state = "not_loaded"

    # -- several models ---------------------------------------------------------

    def _current(self) -> LoadedModel:
        return LoadedModel(
            self.active, self.source, self.loras, self.pipe, self._default_scheduler, self._schedulers,
            self.options, self.load_seconds, self.state, self.error, self.runtime.device if self.pipe is not None else None,
        )

    def _become(self, model: LoadedModel) -> None:
        self.active, self.source, self.loras, self.pipe = model.name, model.source, model.loras, model.pipe
        self._default_scheduler, self._schedulers, self.options = model.default_scheduler, model.schedulers, model.options
        self.load_seconds, self.state, self.error = model.load_seconds, model.state, model.error

    def loaded_models(self) -> dict[str, str]:
        """``{name: where}`` for every loaded model (safe from the event loop: copies only)."""
        where = dict(self.cached.where())
        if self.pipe is not None:
            where[self.active] = self.runtime.device
        return where

    def count_tokens(self, prompt: str) -> dict[str, Any]:
        """The page's token counter, with the running model's own tokenizer (a copy: this runs on
        a thread of the event loop's, not the worker's)."""
        pipe = self.pipe
        if pipe is None:
            raise ModelUnavailable("the model is not loaded yet: tokens are counted with its tokenizer")
        if self._counting[0] is not pipe.tokenizer:
            self._counting = (pipe.tokenizer, copy.deepcopy(pipe.tokenizer))
        return count_prompt_tokens(self._counting[1], prompt, self.settings.prompt_syntax)

    def needs_switch(self, name: str) -> bool:
        """Whether a job for ``name`` ("" : the default) must switch models first."""
        return (name or self.models.default_name) != self.active

    def use_model(self, name: str) -> None:
        """Make ``name`` the running model (from the caches, else loaded). If it fails to load,
        the previous model is running again and :class:`ModelUnavailable` says why."""
        name = name or self.models.default_name
        if name == self.active:
            return
        entry = self.models.get(name)
        if entry is None or entry.broken:
            raise ModelUnavailable(f"model {name!r} cannot be used: {entry.broken if entry else 'no longer in MODELS_DIR'}")
        started = time.perf_counter()
        previous = self._current()
        self.refiner.unshare()  # it borrows the running model's text encoder 2 and VAE
        restored = self.cached.take(name)  # before the previous one goes in: it must not evict the target
        self.cached.put(previous)
        self._become(restored or LoadedModel(name, entry.source, LoraAdapters(self.lora_files, self.settings.lora_cache)))
        try:
            if restored is None:
                self.load()
        except ModelUnavailable:
            self._become(self.cached.take(previous.name) or previous)
            raise
        finally:
            self.refiner.share(self.pipe, self.options)
        self.switch_seconds[name] = time.perf_counter() - started
        log.info("switched to model %s in %.2fs", name, self.switch_seconds[name])

    # -- generation -------------------------------------------------------------

    def scheduler_for(self, sampler: str, schedule: str) -> Any:
        """The running model's scheduler for the pair (made once per model and pair)."""
        if (sampler, schedule) not in self._schedulers:
            self._schedulers[(sampler, schedule)] = make_scheduler(sampler, schedule, self._default_scheduler)
        return self._schedulers[(sampler, schedule)]

    def sampler_name(self, sampler: str, scheduler: Any) -> str:
        return sampler_label(sampler, scheduler)

    def mode_pipeline(self, mode: str) -> Any:
        return self._mode_pipelines().pipeline(mode)

    def decode(self, latents: Any) -> list[Any]:
        return decode_latents(self.pipe, latents)[0]

    def upscale_image(self, image: Any, upscaler: str, cover: tuple[int, int], size: tuple[int, int],
                      cancelled: Callable[[], bool]) -> Any:
        upscaled = self.upscalers.upscale(image, upscaler, 1.0, lambda done, total: None, cancelled, size=cover)
        return center_crop(upscaled, size)

    def generate(
        self, params: GenerationParams, on_step: StepCallback, cancelled: Callable[[], bool],
        inputs: Mapping[str, Any] | None = None, stop_early: Callable[[], bool] = lambda: False,
    ) -> Generation:
        """Run one request through its plan of passes (:mod:`.plan`). ``inputs`` holds the decoded
        input images by role (see :mod:`.modes`). When ``stop_early()`` turns true (A1111's
        interrupt), the remaining steps are skipped and the image is made from the latents so far.
        Raises :class:`JobCancelled` (checked every step and before decoding), :class:`OutOfMemory`
        (after freeing the cache) or :class:`GenerationFailed`."""
        if self.ip_adapters.loaded and self.needs_switch(params.model):
            self.ip_adapters.unload(self.pipe)  # the model kept in the cache goes back as it was loaded
        self.use_model(params.model)
        self.ensure_loaded()
        with self._failures_translated(params):
            # On the shared UNet (every mode's pipeline); fused into its weights when it is compiled.
            lora_hashes = self.loras.apply(self.pipe, params.loras, fused=self.compilation.state == "ready")
            if self.ip_adapters.apply(self.pipe, params.ip.units):
                self._modes = None  # the image encoder came or went: the mode pipelines are made again
        generation = self._run(params, on_step, cancelled, inputs, stop_early)
        generation.info["lora_hashes"] = lora_hashes
        return generation

    def upscale(
        self, params: GenerationParams, on_step: StepCallback, cancelled: Callable[[], bool], inputs: Mapping[str, Any],
    ) -> Generation:
        """An upscale job (no generation: the model need not be loaded); progress counts tiles."""
        with self._failures_translated(params):
            return run_upscale_job(self.upscalers, params, inputs, on_step, cancelled)

    def _run(
        self, params: GenerationParams, on_step: StepCallback, cancelled: Callable[[], bool],
        inputs: Mapping[str, Any] | None, stop_early: Callable[[], bool] = lambda: False,
    ) -> Generation:
        """Build the request's plan on the running model and run it."""
        with self._failures_translated(params):
            mode = prepare_run(self._mode_pipelines(), params, inputs, self.controlnets)
            mode.pipe.scheduler = self.scheduler_for(params.sampler, params.schedule)  # on the pipeline that actually runs
            sampler = sampler_label(params.sampler, mode.pipe.scheduler)
            plan = build_plan(PassContext(params, mode.pipe.scheduler, self, inputs or {}), mode, sampler)
        runner = PlanRunner(self.prompt_embeddings, lambda latents: decode_latents(self.pipe, latents),
                            self._clock, _seconds, self._failures_translated)
        return runner.run(plan, params, on_step, cancelled, stop_early)

    def _mode_pipelines(self) -> ModePipelines:
        """The image-to-image and inpainting pipelines of the running model (remade after a switch)."""
        if self._modes is None or self._modes.base is not self.pipe:
            self._modes = ModePipelines(self.pipe)
        return self._modes

    @contextlib.contextmanager
    def _failures_translated(self, params: GenerationParams) -> Iterator[None]:
        """Turn what the pipeline raises into the errors a client sees; free memory after OOM."""
        try:
            yield
        except ApiError:  # already what the client should see (cancelled, out of memory, a misfit LoRA)
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
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

    def _clock(self) -> Any:
        """A point in time: a CUDA event on the device's stream, or the host's clock elsewhere."""
        if self.runtime.on_cuda:
            mark = torch.cuda.Event(enable_timing=True)
            mark.record()
            return mark
        return time.perf_counter()

    def _recover_memory(self) -> None:
        """Free what dropped objects held now: host memory, and the CUDA cache's device memory."""
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
                "name": self.active,
            },
            "models": {"running": self.active, "loaded": self.loaded_models()},
            "refiner": self.refiner.describe(),
            "embeddings": embedding_listing(self.pipe) if self.pipe is not None else empty_listing(),
            "attention": self.options.get("attention"),
            "options": self.options,
            "compile": self.compilation.describe(),
            "versions": {"torch": torch.__version__, "diffusers": package_version("diffusers")},
        }
