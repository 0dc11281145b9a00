"""The typed keys of everything the application holds (created in :mod:`.contexts` and :func:`.app.create_app`)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from marshmallow import Schema

from ..config import Settings
from ..jobs.backend import Backend
from ..jobs.events import EventHub
from ..jobs.outputs import OutputStore
from ..jobs.queue import JobQueue
from ..jobs.status import StatusBoard
from ..jobs.store import JobStore
from ..jobs.webhooks import Outbox
from ..jobs.usage import UsageLedger
from ..pipeline.controlnet_files import ControlNetCatalog
from ..pipeline.ip_adapter_files import IpAdapterCatalog
from ..pipeline.lora_files import LoraCatalog
from ..pipeline.model_catalog import ModelCatalog
from ..pipeline.preprocessors import Annotate
from ..pipeline.upscaler_catalog import UpscalerCatalog
from .key_ring import KeyRing
from .metrics import Metrics
from .rates import RateWindow
from .signed_urls import UrlSigner

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", OutputStore)
EngineFactory = Callable[[Settings], Backend]

ENGINE_FACTORY = web.AppKey("engine_factory", Callable)
ENGINE = web.AppKey("engine", Backend)  # the local Engine (or a test's subclass), or RayCluster
STATUS = web.AppKey("status", StatusBoard)  # the engine's latest snapshot: what the event loop reads of it
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
QUEUE = web.AppKey("queue", JobQueue)
JOB_STORE = web.AppKey("job_store", JobStore)
GENERATE_SCHEMA = web.AppKey("generate_schema", Schema)
STATIC_DIR = web.AppKey("static_dir", Path)
HUB = web.AppKey("hub", EventHub)
WEBSOCKETS = web.AppKey("websockets", weakref.WeakSet)
METRICS = web.AppKey("metrics", Metrics)
OUTBOX = web.AppKey("outbox", Outbox)  # the webhook outbox's letters (jobs/webhooks.py), written by the queue's recorder
RATES = web.AppKey("rates", RateWindow)  # each key's requests of the last minute (api/rates.py)
USAGE = web.AppKey("usage", UsageLedger)  # each key's jobs, images and GPU-seconds per day (jobs/usage.py)
KEY_RING = web.AppKey("key_ring", KeyRing)  # KEYS_FILE's keys, re-read when it changes (api/key_ring.py)
URL_SIGNER = web.AppKey("url_signer", UrlSigner)  # only with KEYS_FILE: output URLs are signed (api/signed_urls.py)


@dataclass
class LastPoll:
    """When ``/sdapi/v1/progress`` was last polled (``time.monotonic()``); mutable, so it can
    change while the app runs."""

    at: float = float("-inf")


A1111_PROGRESS_POLL = web.AppKey("a1111_progress_poll", LastPoll)
A1111_SKIPPED = web.AppKey("a1111_skipped", set)  # ids of jobs /sdapi/v1/skip stopped (their request goes on)
STYLES = web.AppKey("styles", object)  # api/styles.py StyleFile: STYLES_FILE, read when it changes
A1111_OPTIONS = web.AppKey("a1111_options", dict)  # A1111 options kept here (api/a1111_options.py)
A1111_JOBS = web.AppKey("a1111_jobs", set)  # ids of the jobs A1111 requests wait for: what interrupt may stop


# The backend's own catalogs (set beside ENGINE): requests are checked against what it loads from.
LORAS = web.AppKey("loras", LoraCatalog)  # the files in LORA_DIR (read without torch)
CONTROLNETS = web.AppKey("controlnets", ControlNetCatalog)  # the ControlNets in CONTROLNET_DIR (read without torch)
IP_ADAPTERS = web.AppKey("ip_adapters", IpAdapterCatalog)  # the IP-Adapters in IP_ADAPTER_DIR (read without torch)
MODELS = web.AppKey("models", ModelCatalog)  # the default model and MODELS_DIR's (read without torch)
ANNOTATORS = web.AppKey("annotators", Annotate)  # the annotator models some preprocessors run (loaded on first use)
UPSCALERS = web.AppKey("upscalers", UpscalerCatalog)  # the built-ins and UPSCALERS_DIR's files (spandrel reads new ones)


@dataclass
class Receiving:
    """How many requests are receiving their bodies now, and the limits (one per app)."""

    limit: int
    min_rate: int
    window_s: float = 10.0  # how often their progress is checked (api/slow_bodies.py)
    count: int = 0


RECEIVING = web.AppKey("receiving_bodies", Receiving)  # requests whose bodies are arriving (api/slow_bodies.py)


class OpenApiDocument:
    """The application's OpenAPI document (api/openapi.py builds it), built on its first request, in a
    thread: ~0.1 s of apispec work that an application never asked for it need not pay at start-up."""

    def __init__(self, build: Callable[[], dict]) -> None:
        self._build = build
        self._built: dict | None = None

    async def get(self) -> dict:
        if self._built is None:  # two first requests at once build it twice, alike
            self._built = await asyncio.to_thread(self._build)
        return self._built


OPENAPI = web.AppKey("openapi", OpenApiDocument)
