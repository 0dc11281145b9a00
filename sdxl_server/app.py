"""The application factory: routes, middleware, static files, and the state's life cycle.

State is created and torn down side by side in cleanup contexts and kept under the typed keys
of :mod:`sdxl_server.keys`. The engine comes from ``engine_factory`` so tests can inject faults;
the default factory imports torch lazily, so this module never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sysconfig
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from . import a1111, keys, openai_api, views, websocket
from .config import Settings
from .events import EventHub
from .housekeeping import enforce_retention, recover
from .jobs import JobQueue
from .jobstore import JobStore
from .metrics import Metrics
from .middleware import error_middleware
from .openapi import build_spec
from .security import add_cors_headers, auth_middleware, cors_middleware
from .schemas import generate_request_schema
from .storage import OutputStore
from .worker import GenerationWork

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Any]


def default_engine_factory(settings: Settings) -> Any:
    from .engine import Engine  # torch is imported here, once, not by the HTTP layer

    return Engine(settings)


def find_static_dir() -> Path:
    """``static/`` beside the package in a checkout, or where ``pip install`` put it."""
    checkout = Path(__file__).resolve().parent.parent / "static"
    if checkout.is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "sdxl-server" / "static"


RETENTION_INTERVAL_S = 600.0


async def _retention_loop(app: web.Application) -> None:
    """Apply RETENTION_DAYS / RETENTION_COUNT at start-up and every ten minutes."""
    settings = app[keys.SETTINGS]
    while True:
        try:
            deleted = await enforce_retention(
                app[keys.JOB_STORE], app[keys.STORE], settings.retention_days, settings.retention_count
            )
            app[keys.QUEUE].forget(deleted)
        except Exception:  # noqa: BLE001 - housekeeping must never take the server down
            log.exception("retention failed; trying again later")
        await asyncio.sleep(RETENTION_INTERVAL_S)


async def drain(app: web.Application) -> None:
    """On SIGTERM/SIGINT: refuse new jobs, let the running one finish within SHUTDOWN_GRACE (else
    cancel it), then close the websockets with 1001 so clients see the job's last event first."""
    await app[keys.QUEUE].stop(app[keys.SETTINGS].shutdown_grace)
    await websocket.close_all(app)


def create_app(settings: Settings, engine_factory: EngineFactory | None = None) -> web.Application:
    """Build the aiohttp application for ``settings``."""
    app = web.Application(
        middlewares=[error_middleware, cors_middleware, auth_middleware], client_max_size=settings.max_body_bytes
    )
    app.on_response_prepare.append(add_cors_headers)
    app[keys.SETTINGS] = settings
    app[keys.GENERATE_SCHEMA] = generate_request_schema(settings)
    app[keys.STATIC_DIR] = find_static_dir()
    app[keys.OPENAPI] = build_spec(settings, views.VERSION)
    app[keys.A1111_PROGRESS_POLL] = keys.LastPoll()
    factory = engine_factory or default_engine_factory

    async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
        store = OutputStore(settings.output_dir)
        store.prepare()
        app[keys.STORE] = store
        yield

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-worker")
        engine = factory(settings)
        app[keys.EXECUTOR], app[keys.ENGINE] = executor, engine
        yield
        await asyncio.get_running_loop().run_in_executor(executor, engine.close)
        executor.shutdown(wait=True)

    async def queue_ctx(app: web.Application) -> AsyncIterator[None]:
        hub = EventHub()
        work = GenerationWork(
            app[keys.ENGINE], app[keys.STORE], preview_every=settings.preview_every,
            previews_wanted=lambda job_id: hub.wants_previews(job_id) or a1111.progress_polled_recently(app),
        )
        engine = app[keys.ENGINE]
        queue: JobQueue  # the gauges below read it once it exists
        metrics = Metrics(
            queue_depth=lambda: queue.waiting,
            running=lambda: 1 if queue.running else 0,
            websockets=lambda: len(app[keys.WEBSOCKETS]),
            model_load_seconds=lambda: engine.load_seconds or 0.0,
            gpu_memory=engine.gpu_memory_allocated if engine.runtime.on_cuda else None,
        )

        def publish(event: dict) -> None:
            metrics.observe(event)
            hub.publish(event)

        queue = JobQueue(
            work, app[keys.EXECUTOR], app[keys.JOB_STORE],
            capacity=settings.queue_size, preload=settings.preload, publish=publish,
        )
        app[keys.HUB], app[keys.METRICS] = hub, metrics
        app[keys.QUEUE] = queue
        report = await recover(app[keys.JOB_STORE], app[keys.STORE], settings.restart_running)
        queue.restore(report.requeued)
        queue.start()
        retention = asyncio.create_task(_retention_loop(app), name="sdxl-retention")
        yield
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        await queue.stop()  # already stopped by drain() when the app was shut down

    async def job_store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = JobStore(settings.jobs_db_path)
        await store.open()
        app[keys.JOB_STORE] = store
        yield
        await store.close()

    app.cleanup_ctx.extend([storage_ctx, job_store_ctx, engine_ctx, queue_ctx])
    app[keys.WEBSOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(drain)

    app.router.add_get("/", views.index)
    app.router.add_get("/health", views.health)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_get("/openapi.json", views.openapi)
    app.router.add_get("/api/v1/info", views.server_info)
    app.router.add_post("/api/v1/generate", views.generate)
    app.router.add_post("/api/v1/jobs", views.submit_job)
    app.router.add_get("/api/v1/jobs", views.list_jobs)
    app.router.add_get("/api/v1/jobs/{job_id}", views.get_job)
    app.router.add_delete("/api/v1/jobs/{job_id}", views.cancel_job)
    app.router.add_get("/api/v1/ws", websocket.websocket)
    app.router.add_post("/v1/images/generations", openai_api.images_generations)
    app.router.add_get("/v1/models", openai_api.models)
    app.router.add_post("/sdapi/v1/txt2img", a1111.txt2img)
    app.router.add_get("/sdapi/v1/progress", a1111.progress)
    app.router.add_post("/sdapi/v1/interrupt", a1111.interrupt)
    app.router.add_get("/sdapi/v1/sd-models", a1111.sd_models)
    app.router.add_get("/sdapi/v1/samplers", a1111.samplers)
    app.router.add_get("/sdapi/v1/schedulers", a1111.schedulers)
    app.router.add_get("/sdapi/v1/options", a1111.get_options)
    app.router.add_post("/sdapi/v1/options", a1111.set_options)
    app.router.add_get("/outputs/images/{filename}", views.output_image)
    app.router.add_get("/outputs/metadata/{filename}", views.output_metadata)
    if app[keys.STATIC_DIR].is_dir():
        app.router.add_static("/static/", app[keys.STATIC_DIR], follow_symlinks=False)
    return app
