"""The application's state, created and torn down side by side: one cleanup context each.

They run in order at start-up (and in reverse at shutdown): output files, the job store, the
engine and its worker thread, the queue with its event hub and metrics, then retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..jobs.events import EventHub
from ..jobs.housekeeping import enforce_retention, recover
from ..jobs.job import Work
from ..jobs.outputs import OutputStore
from ..jobs.queue import JobQueue
from ..jobs.states import TERMINAL_EVENTS
from ..jobs.status import StatusBoard
from ..jobs.store import JobStore
from ..jobs.work import GenerationWork
from . import a1111, keys
from .metrics import Metrics

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 600.0
CLOSE_WAIT_S = 30.0  # how long the engine's release may wait for the worker thread at shutdown


async def outputs_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    store = OutputStore(settings.output_dir, png_compress_level=settings.png_compress_level, save_inputs=settings.save_inputs)
    store.prepare()
    app[keys.STORE] = store
    yield
    store.close()


async def job_store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = JobStore(app[keys.SETTINGS].jobs_db_path)
    await store.open()
    app[keys.JOB_STORE] = store
    yield
    await store.close()


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    """The engine, the worker thread that owns its pipeline (on Ray: one thread per replica), and
    the engine's first snapshot (taken there, before any request reads it)."""
    executor = ThreadPoolExecutor(max_workers=app[keys.SETTINGS].concurrency, thread_name_prefix="sdxl-worker")
    engine = app[keys.ENGINE_FACTORY](app[keys.SETTINGS])
    if app[keys.SETTINGS].backend == "ray":
        engine.connect()  # on the main thread, before any request: an unreachable cluster stops start-up
    app[keys.EXECUTOR], app[keys.ENGINE], app[keys.STATUS] = executor, engine, StatusBoard(engine)
    app[keys.MODELS], app[keys.LORAS] = engine.models, engine.lora_files  # one catalog each, the engine's
    app[keys.UPSCALERS] = engine.upscaler_catalog
    await asyncio.get_running_loop().run_in_executor(executor, app[keys.STATUS].take)
    yield
    try:  # behind a generation that ignored its cancel, this could wait for ever: it may not
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(executor, engine.close), CLOSE_WAIT_S)
    except asyncio.TimeoutError:
        log.warning("the worker thread is still busy after %.0fs; not waiting for it", CLOSE_WAIT_S)
        executor.shutdown(wait=False, cancel_futures=True)
        return
    executor.shutdown(wait=True)


def _metrics(app: web.Application, queue: JobQueue) -> Metrics:
    engine = app[keys.ENGINE]
    return Metrics(
        queue_depth=lambda: queue.waiting,
        running=lambda: len(queue.running_jobs),
        websockets=lambda: len(app[keys.WEBSOCKETS]),
        model_load_seconds=lambda: engine.load_seconds or 0.0,
        gpu_memory=(lambda: app[keys.STATUS].latest.gpu_memory_allocated) if engine.runtime.on_cuda else None,
    )


async def queue_ctx(app: web.Application) -> AsyncIterator[None]:
    """The queue, fed by recovery, publishing to the event hub and the metrics."""
    settings = app[keys.SETTINGS]
    hub = EventHub()

    def previews_wanted(job_id: str) -> bool:
        return hub.wants_previews(job_id) or a1111.progress_polled_recently(app)

    if settings.backend == "ray":
        from ..jobs.ray_backend import RayWork

        work: Work = RayWork(app[keys.ENGINE], app[keys.STORE], previews_wanted=previews_wanted)
    else:
        work = GenerationWork(
            app[keys.ENGINE], app[keys.STORE], preview_every=settings.preview_every, previews_wanted=previews_wanted
        )

    def publish(event: dict) -> None:
        metrics.observe(event)
        hub.publish(event)
        if event["type"] in TERMINAL_EVENTS:
            sweep_inputs()

    def needed_inputs() -> list[str | None]:
        """The input images the unfinished jobs need (those a shutdown suspended too: they run again)."""
        return [sha256 for job in queue.unfinished() for sha256 in job.params.inputs.values()]

    def sweep_inputs() -> None:
        """Delete the input images nothing needs any more (unless SAVE_INPUTS)."""
        app[keys.STORE].inputs.sweep()

    queue = JobQueue(
        app[keys.STATUS].reporting(work), app[keys.EXECUTOR], app[keys.JOB_STORE],
        capacity=settings.queue_size, preload=settings.preload, publish=publish, concurrency=settings.concurrency,
        requeue_interrupted=settings.restart_running == "requeue",
    )
    app[keys.STORE].inputs.needed = needed_inputs
    metrics = _metrics(app, queue)
    app[keys.HUB], app[keys.METRICS], app[keys.QUEUE] = hub, metrics, queue
    report = await recover(app[keys.JOB_STORE], app[keys.STORE], settings.restart_running)
    queue.restore(report.requeued)
    sweep_inputs()
    queue.start()
    yield
    await queue.stop()  # already stopped by drain() when the app was shut down


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


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    retention = asyncio.create_task(_retention_loop(app), name="sdxl-retention")
    yield
    retention.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await retention


CONTEXTS = [outputs_ctx, job_store_ctx, engine_ctx, queue_ctx, retention_ctx]
