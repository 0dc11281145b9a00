"""BACKEND=ray, the front end's side: connect to Ray, deploy the pipeline on Ray Serve, run jobs.

:class:`RayCluster` stands where the local engine stands (``/health`` describes the model through
it; ``load`` deploys the replicas; ``close`` removes them and stops a Ray this process started).
:class:`RayWork` is the queue's ``Work``: each lane's thread sends one job to the deployment and
reads its streaming response (placed, steps, outputs), handing each step to the queue as the local
backend does; a cancel cancels the response (the replica stops at its next step); the images come
back encoded and are written under ``OUTPUT_DIR`` here. A replica lost mid-job raises
:class:`Interrupted`, which the queue requeues or fails by the crash rules (attempts). Ray is
imported only when this backend is used (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import ConfigError, Settings
from ..errors import ApiError, GenerationFailed, Interrupted, JobCancelled, ModelUnavailable, StoredError, short_message
from ..pipeline.annotator_files import AnnotatorCatalog
from ..pipeline.annotators import Annotators
from ..pipeline.controlnet_files import ControlNetCatalog
from ..pipeline.ip_adapter_files import IpAdapterCatalog
from ..pipeline.lora_files import LoraCatalog
from ..pipeline.model_catalog import ModelCatalog
from ..pipeline.upscaler_catalog import UpscalerCatalog
from ..pipeline.sources import resolve_model_source
from .backend import RuntimeInfo
from .job import Job, Save, StepReporter
from .outputs import OutputStore

log = logging.getLogger(__name__)

APP_NAME = "sdxl_server"
DEPLOYMENT = "SDXLPipeline"
CONNECT_TIMEOUT_S = 5.0
CANCEL_POLL_S = 0.02  # how often a lane's thread looks at its job's cancel flag
BUSY_RETRY_S = 0.5  # Ray refused the request (backpressure): the job waits, then is offered again


def ray_available() -> bool:
    """Whether the ``ray`` extra is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.serve") is not None


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`ConfigError` (one line) unless ``address``'s port answers within ``timeout_s``:
    ``ray.init`` itself keeps retrying an unreachable cluster for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray cluster answers at {host}:{port} within {timeout_s:g}s "
            f"({getattr(exc, 'strerror', None) or exc}); start one (ray start --head) or fix the address"
        ) from None


class RayCluster:
    """The deployment of the pipeline on Ray Serve: the server's :class:`~.backend.Backend` when
    ``BACKEND=ray``."""

    def __init__(self, settings: Settings, replica_engine: Callable[[Settings], Any] | None = None) -> None:
        self.settings = settings
        self.source = resolve_model_source(settings)
        self.runtime = RuntimeInfo(device="ray", dtype=settings.dtype)  # the replicas' own: in describe()
        # The front end's catalogs, which the API checks requests against (each replica reads the
        # same folders with its own engine's).
        self.models = ModelCatalog(settings)
        self.lora_files = LoraCatalog(settings.lora_dir)
        self.controlnet_files = ControlNetCatalog(settings.controlnet_dir)
        self.ip_adapter_files = IpAdapterCatalog(settings.ip_adapter_dir)
        self.upscaler_catalog = UpscalerCatalog(settings.upscalers_dir)  # the replicas read the same folder
        self.annotators = Annotators(AnnotatorCatalog(settings.annotator_dir), settings.annotator_device)  # run here
        self.options: dict[str, Any] = {}
        self.state = "not_loaded"  # not_loaded -> loading -> ready | failed
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.handle: Any = None
        self.placements: dict[str, dict[str, Any]] = {}  # job id -> the replica (pid, node) that runs it
        self.step_latency_s: deque[float] = deque(maxlen=10_000)  # replica step -> front end, for the bench
        self._replica_engine = replica_engine
        self._remote: dict[str, Any] = {}
        self._joined_ray = False  # this process called ray.init (and disconnects at close)
        self._started_ray = False  # ... and that started a local Ray (stopped at close)
        self._loading = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.source.model_id

    # -- start and stop -------------------------------------------------------------

    def connect(self) -> None:
        """Join RAY_ADDRESS (checked first, with a timeout) or start a local Ray; start Serve
        without its HTTP proxy. Keeps the server's own SIGINT/SIGTERM handlers (``ray.init``
        replaces them), so a signal still drains the queue and stops the local Ray cleanly.
        Call from the main thread, before the server takes requests."""
        if not ray_available():
            raise ConfigError("BACKEND=ray needs Ray: pip install -e '.[ray]' (ray[serve])")
        import ray
        from ray import serve

        address = self.settings.ray_address
        if address:
            check_reachable(address)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not ray.is_initialized():
                if address:
                    ray.init(address=address, namespace=APP_NAME, log_to_driver=False)
                else:
                    cpus = max(os.cpu_count() or 1, self.settings.replicas_total + 1)
                    ray.init(address="local", num_cpus=cpus, namespace=APP_NAME, include_dashboard=False,
                             log_to_driver=False)
                    self._started_ray = True
                self._joined_ray = True
            serve.start(proxy_location="Disabled")  # the aiohttp server is the only API
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line at start-up, not a stack trace
            raise ConfigError(f"could not start Ray Serve ({'RAY_ADDRESS=' + address if address else 'local Ray'}): "
                              f"{short_message(exc)}") from None
        finally:
            for sig, handler in handlers.items():
                if handler is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(sig, handler)
        log.info("Ray %s: %s", "cluster " + address if address else "started locally",
                 {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})

    def _deployment(self) -> Any:
        from ray import serve

        from .replica import Replica

        settings = self.settings
        options: dict[str, Any] = {
            "name": DEPLOYMENT,
            "max_ongoing_requests": 1,  # one generation per GPU at a time; the front end queues the rest
            "ray_actor_options": {"num_gpus": settings.ray_gpus_per_replica, "num_cpus": 1},
            "health_check_period_s": 2,
            "graceful_shutdown_timeout_s": 5,
        }
        if settings.ray_max_replicas:
            options["autoscaling_config"] = {
                "min_replicas": settings.ray_min_replicas, "max_replicas": settings.ray_max_replicas,
                "target_ongoing_requests": 1,
            }
        else:
            options["num_replicas"] = settings.ray_replicas
        return serve.deployment(Replica).options(**options).bind(settings, self._replica_engine)

    def ensure_loaded(self) -> None:
        """Deploy on the first job (``PRELOAD=false``); raise :class:`ModelUnavailable` if it failed."""
        with self._loading:  # several lanes may ask at once: one deploys
            if self.state == "ready":
                return
            if self.state == "failed":
                raise ModelUnavailable(self.error or "the pipeline could not be deployed on Ray Serve")
            self.load()

    def load(self) -> None:
        """Deploy the replicas (each loads the model) and wait until they serve."""
        from ray import serve

        self.state, self.error = "loading", None
        started = time.perf_counter()
        try:
            self.handle = serve.run(self._deployment(), name=APP_NAME, route_prefix=None)
            self._remote = self.handle.describe.remote().result(timeout_s=600)
        except Exception as exc:  # noqa: BLE001 - shown on /health and in each refused request
            self.state = "failed"
            self.error = f"could not deploy the pipeline on Ray Serve: {short_message(exc)}"
            log.error("%s", self.error)
            raise ModelUnavailable(self.error) from exc
        self.options = self._remote.get("options", {})
        self.load_seconds = time.perf_counter() - started
        self.state = "ready"
        log.info("%s replica(s) of %s ready in %.1fs", self.settings.replicas_total, self.model_id, self.load_seconds)

    def close(self) -> None:
        """Remove the deployment; stop Ray if this process started it (no agents left behind)."""
        if not ray_available():
            return
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        try:
            if self._started_ray:
                serve.shutdown()
            elif self.handle is not None:
                serve.delete(APP_NAME)  # a cluster's Ray and Serve stay up for others
        finally:
            if self._joined_ray:
                ray.shutdown()  # stops a local Ray; leaves a cluster
        self.handle, self.state = None, "not_loaded"

    # -- what /health shows -------------------------------------------------------------

    def gpu_memory_allocated(self) -> float:
        return 0.0  # none in this process: the replicas hold the GPUs

    def loaded_models(self) -> dict[str, str]:
        return {}  # the replicas run one model each, not listed here

    def count_tokens(self, prompt: str) -> dict[str, Any]:
        raise ModelUnavailable("this engine does not count tokens")  # the tokenizers are in the replicas

    def describe(self) -> dict[str, Any]:
        remote = self._remote
        return {
            "cuda_available": remote.get("cuda_available", False),
            "device": remote.get("device", "ray"),
            "dtype": remote.get("dtype", self.settings.dtype),
            "gpu": remote.get("gpu"),
            "model": {
                **remote.get("model", {}),
                "id": self.model_id, "source": self.source.kind, "location": self.source.location,
                "origin": self.source.origin, "vae": self.source.vae, "tiny": self.source.kind == "tiny",
                "state": self.state, "loaded": self.state == "ready",
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 2),
                "error": self.error,
            },
            "attention": self.options.get("attention"),
            "options": self.options,
            "versions": remote.get("versions", {}),
            "backend": {
                "name": "ray", "address": self.settings.ray_address or "local",
                "replicas": self.settings.ray_replicas if not self.settings.ray_max_replicas else None,
                "min_replicas": self.settings.ray_min_replicas if self.settings.ray_max_replicas else None,
                "max_replicas": self.settings.ray_max_replicas or None,
                "gpus_per_replica": self.settings.ray_gpus_per_replica,
            },
        }


class RayWork:
    """One job on a Ray Serve replica, from a lane's thread (the queue's ``Work`` protocol)."""

    stops_early = False  # a replica cannot be asked to stop early: A1111's interrupt cancels the job

    def __init__(
        self, cluster: RayCluster, store: OutputStore, *, previews_wanted: Callable[[str], bool] = lambda job_id: False
    ) -> None:
        self.cluster = cluster
        self.store = store
        self.previews_wanted = previews_wanted

    def load(self) -> None:
        self.cluster.load()

    def __call__(self, job: Job, on_step: StepReporter, cancelled: Callable[[], bool]) -> Save:
        self.cluster.ensure_loaded()
        request = {"id": job.id, "params": job.params.to_dict(), "created_at": job.created_at, "previews": True,
                   "warnings": list(job.warnings),
                   # image to image: the PNGs by SHA-256, unless the replica reads them from OUTPUT_STORE
                   "inputs": {} if self.cluster.settings.output_store else self.store.inputs.files(job.params)}
        try:
            end = self._stream(job, request, on_step, cancelled)
        finally:
            self.cluster.placements.pop(job.id, None)
        if end["type"] == "error":
            if end.get("cancelled"):
                raise JobCancelled(f"job {job.id} was cancelled")
            raise StoredError(end["error"])
        if "written" in end:  # the replica wrote them to OUTPUT_STORE
            return lambda: self.store.result_of(end["written"])
        outputs = end["outputs"]
        return lambda: self._write(job, outputs)  # written on the encoder thread, as local jobs are

    def _stream(self, job: Job, request: dict[str, Any], on_step: StepReporter, cancelled: Callable[[], bool]) -> dict:
        from ray import exceptions as ray_errors
        from ray.serve import exceptions as serve_errors

        while True:
            response = self.cluster.handle.options(stream=True).generate.remote(request)
            finished = threading.Event()
            watcher = threading.Thread(target=_cancel_when, args=(cancelled, finished, response), daemon=True)
            watcher.start()
            try:
                for event in response:
                    if event["type"] == "placed":
                        self.cluster.placements[job.id] = {"pid": event["pid"], "node": event["node"]}
                        log.info("job %s runs on replica pid %s on %s", job.id, event["pid"], event["node"])
                    elif event["type"] == "step":
                        self.cluster.step_latency_s.append(time.time() - event["at"])
                        preview = event["preview"] if self.previews_wanted(job.id) else None
                        on_step(event["step"], event["total"], preview)
                    else:
                        return event
                raise GenerationFailed(f"the replica ended job {job.id} without a result")
            except serve_errors.BackPressureError:
                if cancelled():
                    raise JobCancelled(f"job {job.id} was cancelled") from None
                time.sleep(BUSY_RETRY_S)  # Ray's queue is full (another front end?): offer it again
            except (serve_errors.RequestCancelledError, ray_errors.TaskCancelledError):
                raise JobCancelled(f"job {job.id} was cancelled") from None
            except (ray_errors.RayActorError, ray_errors.ActorUnavailableError, ray_errors.NodeDiedError) as exc:
                if cancelled():
                    raise JobCancelled(f"job {job.id} was cancelled") from None
                raise Interrupted(
                    f"the Ray replica running this job was lost ({short_message(exc)}); it is restarted by Ray"
                ) from None
            except ApiError:
                raise
            except ray_errors.RayError as exc:
                raise GenerationFailed(f"generation failed on the Ray replica: {short_message(exc)}") from None
            finally:
                finished.set()

    def _write(self, job: Job, outputs: list[tuple[str, bytes, dict[str, Any]]]) -> dict[str, Any]:
        try:
            for output_id, png, meta in outputs:
                self.store.write_outputs(output_id, png, meta)
        except BaseException:
            self.store.discard_outputs(job.id)  # a failed job leaves no image of its batch behind
            raise
        return self.store.result_of([meta for _, _, meta in outputs])


def _cancel_when(cancelled: Callable[[], bool], finished: threading.Event, response: Any) -> None:
    """Cancel ``response`` (the replica stops at its next step) once the job is cancelled."""
    while not finished.wait(CANCEL_POLL_S):
        if cancelled():
            response.cancel()
            return
