"""The backend jobs run on, as the rest of the server uses it: declared here, not probed for.

Two implement :class:`Backend`: the local engine (:class:`sdxl_server.pipeline.engine.Engine`,
structurally: the pipeline never imports ``jobs``) and Ray Serve's front end
(:class:`~.ray_backend.RayCluster`). :class:`InProcessBackend` adds what
:class:`~.work.GenerationWork` calls to generate in this process (the local engine, or a Ray
replica's). The api layer holds one as ``keys.ENGINE`` and reads the device's figures only from
the snapshots :mod:`.status` takes on the worker thread. Never imports torch or aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..params import GenerationParams
from ..pipeline.controlnet_files import ControlNetCatalog  # plain file logic, no torch
from ..pipeline.ip_adapter_files import IpAdapterCatalog  # plain file logic, no torch
from ..pipeline.lora_files import LoraCatalog  # plain file logic, no torch
from ..pipeline.model_catalog import ModelCatalog
from ..pipeline.preprocessors import Annotate  # a protocol, no torch
from ..pipeline.upscaler_catalog import UpscalerCatalog


class RuntimeFacts(Protocol):
    """Where and in what precision the model runs (``pipeline.runtime.Runtime`` locally, resolved
    with torch; :class:`RuntimeInfo` where the device is elsewhere)."""

    @property
    def device(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def cuda_available(self) -> bool: ...

    @property
    def on_cuda(self) -> bool: ...


@dataclass(frozen=True)
class RuntimeInfo:
    """Runtime facts without torch, for a backend whose device is not in this process (Ray's
    replicas report theirs through ``describe``)."""

    device: str
    dtype: str
    cuda_available: bool = False

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")


class Generated(Protocol):
    """What one generation made: the images (PIL) and the facts for their metadata."""

    images: list[Any]
    info: dict[str, Any]


class Backend(Protocol):
    """What the api and jobs layers use of a backend. ``load``, ``describe`` and
    ``gpu_memory_allocated`` may ask the device: they run on the worker thread (or its executor),
    never on the event loop."""

    options: dict[str, Any]  # the memory and attention options in effect ({} until loaded)
    load_seconds: float | None  # how long the last load took (None until one succeeded)
    models: ModelCatalog  # the models: the API checks a request's model against it, the engine loads from it
    lora_files: LoraCatalog  # the LoRA files: likewise, one catalog for both
    controlnet_files: ControlNetCatalog  # the ControlNets in CONTROLNET_DIR: likewise
    ip_adapter_files: IpAdapterCatalog  # the IP-Adapters in IP_ADAPTER_DIR: likewise
    upscaler_catalog: UpscalerCatalog  # the upscalers: likewise
    annotators: Annotate  # the annotator models of ANNOTATOR_DIR some preprocessors run (in this process)

    @property
    def runtime(self) -> RuntimeFacts: ...

    @property
    def model_id(self) -> str: ...

    def load(self) -> None:
        """Load (deploy) the model; a failure is recorded for :meth:`describe`, then raised as
        :class:`~sdxl_server.errors.ModelUnavailable`."""

    def close(self) -> None:
        """Release the model (and what was started for it) at shutdown."""

    def describe(self) -> dict[str, Any]:
        """What ``/health`` shows of the model and the device."""

    def gpu_memory_allocated(self) -> float:
        """Bytes held by tensors on this process's CUDA device (0 without one)."""

    def loaded_models(self) -> dict[str, str]:
        """``{name: where}`` for every model loaded here (safe from the event loop: copies only)."""

    def count_tokens(self, prompt: str) -> dict[str, Any]:
        """``prompt`` counted by the running model's tokenizer, off the event loop; raises
        :class:`~sdxl_server.errors.ModelUnavailable` where that cannot be done."""


class InProcessBackend(Backend, Protocol):
    """A backend that generates in this process, on the worker thread (see :mod:`.work`)."""

    def needs_switch(self, name: str) -> bool:
        """Whether a job for model ``name`` ("": the default) must switch models first."""

    def use_model(self, name: str) -> None:
        """Make ``name`` the running model; raises ``ModelUnavailable`` if it cannot be loaded."""

    def generate(
        self, params: GenerationParams, on_step: Callable[[int, int, Any], None], cancelled: Callable[[], bool],
        inputs: Mapping[str, Any] | None = None, stop_early: Callable[[], bool] = lambda: False,
    ) -> Generated:
        """Run one job's generation, reporting each step; raises ``JobCancelled`` once ``cancelled()``."""

    def upscale(
        self, params: GenerationParams, on_step: Callable[[int, int, Any], None], cancelled: Callable[[], bool],
        inputs: Mapping[str, Any],
    ) -> Generated:
        """Run one upscale job (``params.mode == "upscale"``), reporting tiles as steps."""
