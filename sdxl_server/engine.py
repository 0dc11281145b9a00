"""The pipeline: which model, how it is loaded, which memory options, and one generation.

Everything here runs on the single worker thread that owns the pipeline (see :mod:`jobs`); the
only exception is :func:`resolve_runtime`, called once at start-up. Never imports aiohttp.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULT_HUB_MODEL, ConfigError, Settings
from .errors import GenerationFailed, JobCancelled, ModelUnavailable, OutOfMemory
from .params import MAX_SEED, SCHEDULERS, GenerationParams
from .tiny import TINY_MODEL_NAME, ensure_tiny_model

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, "torch.Tensor"], None]
"""``on_step(step, total_steps, latents)``; ``step`` counts completed steps from 1."""

# Tiles of 512 px (64 latents) so tiling takes effect at SDXL's native 1024x1024; diffusers'
# default tile is the VAE's sample_size (1024), which would never tile a 1024 image.
VAE_TILE_PX = 512

_FIX = (
    "put a diffusers SDXL folder (with model_index.json) in MODEL_DIR, point MODEL_ID at a local "
    "folder or .safetensors file, or set MODEL_ID=tiny to run offline with random weights"
)


# --------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision the pipeline runs, resolved from DEVICE and DTYPE."""

    device: str
    dtype: str
    cuda_available: bool

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")


def xformers_importable() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_runtime(settings: Settings) -> Runtime:
    """Resolve ``auto`` and check the device and options can work here; raise :class:`ConfigError`."""
    cuda = torch.cuda.is_available()
    device = settings.device
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device.startswith("cuda"):
        if not cuda:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ConfigError(
                f"DEVICE={settings.device} but CUDA is not available (torch {torch.__version__} is {build}): "
                "install a CUDA build of torch (see README) or set DEVICE=cpu"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"DEVICE={device} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("DEVICE=mps but the MPS backend is not available: set DEVICE=cpu")
    dtype = settings.dtype
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if settings.cpu_offload != "none" and not device.startswith("cuda"):
        raise ConfigError(f"CPU_OFFLOAD={settings.cpu_offload} needs CUDA (DEVICE is {device}): set CPU_OFFLOAD=none")
    if settings.attention == "xformers":
        if not device.startswith("cuda"):
            raise ConfigError(f"ATTENTION=xformers needs CUDA (DEVICE is {device}): use ATTENTION=auto or sdpa")
        if not xformers_importable():
            raise ConfigError("ATTENTION=xformers but xformers is not installed: pip install '.[xformers]' or ATTENTION=auto")
    return Runtime(device=device, dtype=dtype, cuda_available=cuda)


# --------------------------------------------------------------------------- model source


@dataclass(frozen=True)
class ModelSource:
    """Which model to load and where it comes from.

    ``kind`` is ``tiny``, ``hub``, ``folder`` or ``single_file``; ``origin`` is the setting that
    chose it (``MODEL_ID``, ``MODEL_DIR``, or ``default``).
    """

    kind: str
    location: str
    origin: str
    vae: str | None = None

    @property
    def model_id(self) -> str:
        return TINY_MODEL_NAME if self.kind == "tiny" else self.location


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", "\\")) or (len(value) > 1 and value[1] == ":") or Path(value).exists()


def _single_file_in(folder: Path) -> tuple[Path | None, Path | None]:
    """The seed's loose layout: an SDXL checkpoint (and perhaps a VAE) as .safetensors in a folder."""
    files = sorted(folder.glob("*.safetensors"))
    vaes = [f for f in files if "vae" in f.name.lower()]
    checkpoints = [f for f in files if f not in vaes and "refiner" not in f.name.lower()]
    if len(checkpoints) > 1:
        checkpoints = [f for f in checkpoints if "base" in f.name.lower()] or checkpoints[:0]
    return (checkpoints[0] if len(checkpoints) == 1 else None), (vaes[0] if len(vaes) == 1 else None)


def _local_source(path: Path, origin: str, vae: str | None) -> ModelSource | None:
    if path.is_file() or path.suffix in (".safetensors", ".ckpt"):
        return ModelSource("single_file", str(path), origin, vae)
    if (path / "model_index.json").is_file():
        return ModelSource("folder", str(path), origin, vae)
    if path.is_dir():
        checkpoint, folder_vae = _single_file_in(path)
        if checkpoint is not None:
            return ModelSource("single_file", str(checkpoint), origin, vae or (str(folder_vae) if folder_vae else None))
    return None


def resolve_model_source(settings: Settings) -> ModelSource:
    """The seed's order: ``MODEL_ID``, then the local ``MODEL_DIR``, then the Hub default."""
    vae = settings.vae_id
    model_id = settings.model_id
    if model_id:
        if model_id.lower() == TINY_MODEL_NAME:
            return ModelSource("tiny", TINY_MODEL_NAME, "MODEL_ID", vae)
        if _looks_local(model_id):
            path = Path(model_id).expanduser()
            return _local_source(path, "MODEL_ID", vae) or ModelSource("folder", str(path), "MODEL_ID", vae)
        return ModelSource("hub", model_id, "MODEL_ID", vae)
    local = _local_source(settings.model_dir, "MODEL_DIR", vae) if settings.model_dir.is_dir() else None
    return local or ModelSource("hub", DEFAULT_HUB_MODEL, "default", vae)


# --------------------------------------------------------------------------- schedulers


def _scheduler_table() -> dict[str, tuple[Any, dict[str, Any]]]:
    from diffusers import (
        DDIMScheduler,
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    dpm = DPMSolverMultistepScheduler
    return {
        "euler": (EulerDiscreteScheduler, {}),
        "euler_a": (EulerAncestralDiscreteScheduler, {}),
        "dpmpp_2m": (dpm, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpmpp_2m_karras": (dpm, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
        "dpmpp_2m_sde": (dpm, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        "dpmpp_2m_sde_karras": (dpm, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
        "ddim": (DDIMScheduler, {}),
        "unipc": (UniPCMultistepScheduler, {}),
        "deis": (DEISMultistepScheduler, {}),
    }


_CLASS_LABELS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DDIMScheduler": "DDIM",
    "UniPCMultistepScheduler": "UniPC",
    "DEISMultistepScheduler": "DEIS",
    "PNDMScheduler": "PNDM",
    "LMSDiscreteScheduler": "LMS",
}


def _sampler_label(name: str, scheduler: Any) -> str:
    """A1111-style sampler name for the metadata ("Euler", "DPM++ 2M Karras", ...)."""
    if name != "default":
        return SCHEDULERS[name]
    cls = type(scheduler).__name__
    return _CLASS_LABELS.get(cls, cls)


# --------------------------------------------------------------------------- engine


@dataclass
class Generation:
    """What one pipeline call produced: PIL images and facts for the metadata."""

    images: list[Any]
    info: dict[str, Any] = field(default_factory=dict)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
                f"(chosen by {self.source.origin}): {_short(exc)}. Fix: {self._fix()}"
            )
            log.error("%s", self.error)
            self._free()
            raise ModelUnavailable(self.error) from exc
        self.pipe = pipe
        self._default_scheduler = pipe.scheduler
        self.load_seconds = time.perf_counter() - started
        self.state = "ready"
        log.info("model ready in %.1fs: %s", self.load_seconds, self.options)

    def _fix(self) -> str:
        if self.source.kind == "single_file" and not self.settings.model_config:
            return (
                "a single-file checkpoint needs SDXL's component configs: set MODEL_CONFIG to a local "
                f"diffusers SDXL folder (or allow the download of {DEFAULT_HUB_MODEL}'s configs); or {_FIX}"
            )
        return _FIX

    def _load_vae(self, location: str, config_source: str):
        from diffusers import AutoencoderKL

        dtype = self.runtime.torch_dtype
        path = Path(location).expanduser()
        if path.suffix == ".safetensors" or path.is_file():
            return AutoencoderKL.from_single_file(str(path), config=config_source, subfolder="vae", dtype=dtype)
        return AutoencoderKL.from_pretrained(str(path) if path.exists() else location, dtype=dtype)

    def _load_pipeline(self):
        from diffusers import StableDiffusionXLPipeline

        source, dtype = self.source, self.runtime.torch_dtype
        kwargs: dict[str, Any] = {"dtype": dtype}
        if source.kind == "single_file":
            config = self.settings.model_config or DEFAULT_HUB_MODEL
            if source.vae:
                kwargs["vae"] = self._load_vae(source.vae, config)
            return StableDiffusionXLPipeline.from_single_file(source.location, config=config, **kwargs)
        location = source.location
        if source.kind == "tiny":
            location = str(ensure_tiny_model(self.settings.tiny_cache))
        elif source.kind == "folder" and not Path(location).is_dir():
            raise FileNotFoundError(f"no such folder: {location}")
        if source.vae:
            kwargs["vae"] = self._load_vae(source.vae, location)
        if source.kind == "hub" and self.runtime.dtype == "float16":
            try:  # half the download where the repository publishes fp16 weights
                return StableDiffusionXLPipeline.from_pretrained(location, variant="fp16", **kwargs)
            except ValueError as exc:
                if "variant" not in str(exc):
                    raise
        return StableDiffusionXLPipeline.from_pretrained(location, **kwargs)

    def _apply_options(self, pipe) -> None:
        settings, runtime = self.settings, self.runtime
        attention = settings.attention
        if attention == "auto":
            attention = "xformers" if runtime.on_cuda and xformers_importable() else "sdpa"
        if attention == "xformers":
            try:
                pipe.enable_xformers_memory_efficient_attention()
            except Exception as exc:  # noqa: BLE001 - auto mode falls back to SDPA, which is as fast
                if settings.attention == "xformers":
                    raise
                log.warning("xFormers could not be enabled (%s); using PyTorch SDPA", _short(exc))
                attention = "sdpa"
        elif attention == "slicing":
            # Only on request: stacked on SDPA/xFormers it saves little memory and costs speed.
            pipe.enable_attention_slicing()

        tiling = settings.vae_tiling == "on" or (settings.vae_tiling == "auto" and runtime.on_cuda)
        if tiling:
            pipe.vae.enable_tiling()
            pipe.vae.tile_sample_min_size = VAE_TILE_PX
            pipe.vae.tile_latent_min_size = VAE_TILE_PX // pipe.vae_scale_factor
        if settings.vae_slicing:
            pipe.vae.enable_slicing()

        if settings.cpu_offload == "model":
            pipe.enable_model_cpu_offload(device=runtime.device)
        elif settings.cpu_offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=runtime.device)
        else:
            pipe.to(runtime.device)
        pipe.set_progress_bar_config(disable=True)  # the server reports progress itself
        self.options = {
            "attention": attention,
            "vae_tiling": tiling,
            "vae_tile_px": VAE_TILE_PX if tiling else None,
            "vae_slicing": settings.vae_slicing,
            "cpu_offload": settings.cpu_offload,
            "torch_threads": torch.get_num_threads(),
        }

    def _free(self) -> None:
        self.pipe = None
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
            cls, overrides = _scheduler_table()[name]
            self._schedulers[name] = cls.from_config(self._default_scheduler.config, **overrides)
        return self._schedulers[name]

    def generate(self, params: GenerationParams, on_step: StepCallback, cancelled: Callable[[], bool]) -> Generation:
        """Run one request: ``params.num_images`` images in one pipeline call, or one at a time if
        the batch runs out of memory. Image ``i`` uses seed ``seed + i``, so each can be redone
        alone. Raises :class:`JobCancelled` (checked every step and before decoding),
        :class:`OutOfMemory` (after freeing the cache) or :class:`GenerationFailed`."""
        self.ensure_loaded()
        self.pipe.scheduler = self._scheduler(params.scheduler)
        try:
            return self._generate_in_batches(params, [params.num_images], on_step, cancelled)
        except OutOfMemory:
            if params.num_images == 1:
                raise
            log.warning("a batch of %d ran out of memory; generating one image at a time", params.num_images)
            return self._generate_in_batches(params, [1] * params.num_images, on_step, cancelled)

    def _generate_in_batches(
        self, params: GenerationParams, batches: list[int], on_step: StepCallback, cancelled: Callable[[], bool]
    ) -> Generation:
        pipe = self.pipe
        images: list[Any] = []
        seeds = [(params.seed + i) % (MAX_SEED + 1) for i in range(params.num_images)]
        upcast, inference_s, decode_s, steps_done = False, 0.0, 0.0, 0

        def step_end(pipeline, index: int, timestep, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled():
                raise JobCancelled("the job was cancelled")
            on_step(steps_done + index + 1, pipeline.num_timesteps * len(batches), tensors["latents"])
            return {}

        for size in batches:
            started = time.perf_counter()
            with self._failures_translated(params), torch.inference_mode():
                latents = pipe(
                    prompt=params.prompt,
                    negative_prompt=params.negative_prompt or None,
                    width=params.width,
                    height=params.height,
                    num_inference_steps=params.steps,
                    guidance_scale=params.guidance_scale,
                    num_images_per_prompt=size,
                    # CPU generators give the same noise for a seed on every device.
                    generator=[torch.Generator("cpu").manual_seed(seeds[len(images) + i]) for i in range(size)],
                    output_type="latent",
                    callback_on_step_end=step_end,
                ).images
                if cancelled():
                    raise JobCancelled("the job was cancelled")
                if self.runtime.on_cuda:
                    torch.cuda.synchronize()  # so the inference/decode split is true on a GPU
                denoised = time.perf_counter()
                decoded, batch_upcast = self._decode(latents)
            images.extend(decoded)
            upcast = upcast or batch_upcast
            steps_done += pipe.num_timesteps
            inference_s += denoised - started
            decode_s += time.perf_counter() - denoised
        info = {
            "sampler": _sampler_label(params.scheduler, pipe.scheduler),
            "seeds": seeds,
            "vae_upcast": upcast,
            "inference_s": round(inference_s, 4),
            "decode_s": round(decode_s, 4),
        }
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
            raise GenerationFailed(f"generation failed: {_short(exc)}") from exc
        finally:
            if self.pipe is not None and hasattr(self.pipe, "maybe_free_model_hooks"):
                self.pipe.maybe_free_model_hooks()

    def _recover_memory(self) -> None:
        gc.collect()
        if self.runtime.on_cuda:
            torch.cuda.empty_cache()

    def _decode(self, latents: torch.Tensor) -> tuple[list[Any], bool]:
        """Decode latents to PIL images; a non-finite half-precision decode is redone in float32."""
        pipe, vae = self.pipe, self.pipe.vae
        config = vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        dtype = vae.dtype
        image = vae.decode(latents.to(dtype), return_dict=False)[0]
        upcast = False
        if dtype != torch.float32 and not torch.isfinite(image).all():
            # SDXL's original VAE overflows in float16 (black or NaN images): redo this decode in float32.
            log.warning("VAE decode in %s was not finite; decoding again in float32", dtype)
            vae.to(torch.float32)
            try:
                image = vae.decode(latents.float(), return_dict=False)[0]
            finally:
                vae.to(dtype)
            upcast = True
        return pipe.image_processor.postprocess(image.float(), output_type="pil"), upcast

    # -- reporting --------------------------------------------------------------

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
            "attention": self.options.get("attention"),
            "options": self.options,
            "versions": {"torch": torch.__version__, "diffusers": _version("diffusers")},
        }


@functools.cache
def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
