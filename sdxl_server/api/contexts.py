"""The application's state, created and torn down side by side: one cleanup context each.

They run in order at start-up (and in reverse at shutdown): output files, the job store, the
engine and its worker thread, the queue with its event hub, metrics and webhook outbox, the
webhooks' dispatcher, then retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..jobs.blobs import blobs_for
from ..jobs.describe import describe
from ..jobs.events import EventHub
from ..jobs.housekeeping import enforce_retention, recover
from ..jobs.job import Work
from ..jobs.outputs import OutputStore
from ..jobs.queue import JobQueue
from ..jobs.states import TERMINAL_EVENTS
from ..jobs.status import StatusBoard
from ..jobs.store import JobStore
from ..jobs.webhook_delivery import Dispatcher
from ..jobs.webhooks import Outbox
from ..jobs.usage import UsageLedger
from ..jobs.work import GenerationWork
from ..config import ConfigError
from . import a1111, keys
from .key_file import KeyFileError
from .key_ring import watch
from .metrics import Metrics
from .ownership import present
from .signed_urls import SECRET_FILE_NAME, UrlSigner, load_secret
from .webhook_client import WebhookClient
from .usage import limits_lookup, per_key_figures

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 600.0
CLOSE_WAIT_S = 30.0  # how long the engine's release may wait for the worker thread at shutdown


async def outputs_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    store = OutputStore(settings.output_dir, png_compress_level=settings.png_compress_level,
                        save_inputs=settings.save_inputs, blobs=blobs_for(settings))
    await asyncio.get_running_loop().run_in_executor(None, store.prepare)  # may reach the object storage
    app[keys.STORE] = store
    yield
    store.close()


async def keys_ctx(app: web.Application) -> AsyncIterator[None]:
    """``KEYS_FILE``: read before the first request (a bad file stops the start), then watched;
    and the secret that signs output URLs, since results are private with keys."""
    ring = app[keys.KEY_RING]
    if not ring.in_use:
        yield
        return
    try:
        await asyncio.to_thread(ring.load)
    except KeyFileError as exc:
        raise ConfigError(f"KEYS_FILE {ring.path}: {exc}") from None
    log.info("KEYS_FILE %s: %d key(s) in use", ring.path, len(ring.names))
    settings = app[keys.SETTINGS]
    secret_file = settings.jobs_db_path.parent / SECRET_FILE_NAME
    try:
        secret = await asyncio.to_thread(load_secret, secret_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the URL signing secret {secret_file} cannot be used: {exc}") from None
    app[keys.URL_SIGNER] = UrlSigner(secret, settings.url_ttl)
    watcher = asyncio.create_task(watch(ring))
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


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
    app[keys.CONTROLNETS], app[keys.IP_ADAPTERS] = engine.controlnet_files, engine.ip_adapter_files
    app[keys.UPSCALERS], app[keys.ANNOTATORS] = engine.upscaler_catalog, engine.annotators
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
    metrics = Metrics(
        queue_depth=lambda: queue.waiting,
        running=lambda: len(queue.running_jobs),
        websockets=lambda: len(app[keys.WEBSOCKETS]),
        model_load_seconds=lambda: engine.load_seconds or 0.0,
        gpu_memory=(lambda: app[keys.STATUS].latest.gpu_memory_allocated) if engine.runtime.on_cuda else None,
        per_key=lambda: per_key_figures(queue),
    )
    queue.quotas.usage.listeners.append(metrics.used)
    return metrics


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
        hub.publish(present(app, event), queue.owner_of(event["id"]))
        if event["type"] == "progress":
            letters.observe(event, next((job for job in queue.running_jobs if job.id == event["id"]), None))
        if event["type"] in TERMINAL_EVENTS:
            app[keys.STORE].inputs.sweep_soon()  # what nothing needs any more (unless SAVE_INPUTS)

    def needed_inputs() -> list[str | None]:
        """The input images the unfinished jobs need (those a shutdown suspended too: they run again)."""
        return [sha256 for job in queue.unfinished() for sha256 in job.params.inputs.values()]

    letters = Outbox(
        app[keys.JOB_STORE], lambda job: present(app, describe(queue, job)), progress_interval=settings.webhook_progress_interval
    )
    usage = UsageLedger(app[keys.JOB_STORE])
    await usage.load()
    queue = JobQueue(
        app[keys.STATUS].reporting(work), app[keys.EXECUTOR], app[keys.JOB_STORE],
        capacity=settings.queue_size, preload=settings.preload, publish=publish, concurrency=settings.concurrency,
        requeue_interrupted=settings.restart_running == "requeue", letters=letters, limits_of=limits_lookup(app),
        usage=usage,
    )
    app[keys.STORE].inputs.needed = needed_inputs
    metrics = _metrics(app, queue)
    app[keys.HUB], app[keys.METRICS], app[keys.QUEUE] = hub, metrics, queue
    app[keys.OUTBOX], app[keys.USAGE] = letters, usage
    report = await recover(app[keys.JOB_STORE], app[keys.STORE], settings.restart_running)
    await letters.reconcile()  # the end events of jobs recovery ended
    queue.restore(report.requeued)
    app[keys.STORE].inputs.sweep_soon()
    await app[keys.STORE].inputs.swept()
    queue.start()
    yield
    await queue.stop()  # already stopped by drain() when the app was shut down


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """The webhook outbox's dispatcher (its rows written by the queue's recorder) and its HTTP client."""
    settings = app[keys.SETTINGS]
    client = WebhookClient(settings)
    dispatcher = Dispatcher(
        app[keys.JOB_STORE], client, app[keys.OUTBOX].wakeup,
        secret=settings.webhook_secret, retry_for=settings.webhook_retry_for,
    )
    running = asyncio.create_task(dispatcher.run(), name="sdxl-webhooks")
    yield
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await dispatcher.close()  # what was being sent stays pending: sent again at the next start
    await app[keys.OUTBOX].close()
    await client.close()


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


CONTEXTS = [keys_ctx, outputs_ctx, job_store_ctx, engine_ctx, queue_ctx, webhooks_ctx, retention_ctx]
