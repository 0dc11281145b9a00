"""The application factory: middleware, state, routes.

State is created in the cleanup contexts of :mod:`.contexts` and kept under the typed keys of
:mod:`.keys`. The engine comes from ``engine_factory`` so tests can inject faults; the default
factory imports the pipeline (and torch) lazily, so the HTTP layer never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sysconfig
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..config import Settings
from . import keys, websocket
from .admission import admission_middleware
from .contexts import CONTEXTS
from .forwarded import forwarded_middleware
from .key_ring import KeyRing
from .limits import body_limit_middleware
from .middleware import error_middleware
from .openapi import build_spec
from .rates import RateWindow
from .routes import ROUTES, add_routes
from .schemas import generate_request_schema
from .security import add_cors_headers, auth_middleware, cors_middleware
from .server import Application
from .slow_bodies import slow_body_middleware
from .styles import StyleFile
from .webhook_targets import check_default_webhook


def default_engine_factory(settings: Settings) -> Any:
    if settings.backend == "ray":  # the replicas own the pipelines; ray is imported only here
        from ..jobs.ray_backend import RayCluster

        return RayCluster(settings)
    from ..pipeline.engine import Engine  # torch is imported here, once, not by the HTTP layer

    return Engine(settings)


def find_static_dir() -> Path:
    """``static/`` beside the package in a checkout, or where ``pip install`` put it."""
    checkout = Path(__file__).resolve().parents[2] / "static"
    if checkout.is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "sdxl-server" / "static"


log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def drain(app: web.Application) -> None:
    """On SIGTERM/SIGINT: refuse new jobs, let the running one finish within SHUTDOWN_GRACE (or
    until a second signal), else stop it at its next step and keep it queued for the next start;
    then close the websockets with 1001 so clients see the job's last event first.

    A second signal (Ctrl-C twice) only ends the grace period: it replaces aiohttp's handler,
    which would abort the drain and exit with code 1, leaving the running job recorded as running."""
    urgent = asyncio.Event()
    _on_second_signal(urgent.set)
    grace = app[keys.SETTINGS].shutdown_grace
    log.info("shutting down: the running job has %ss to finish (a second signal ends the wait)", grace)
    await app[keys.QUEUE].stop(grace, urgent)
    await websocket.close_all(app)


def _on_second_signal(callback: Callable[[], None]) -> None:
    """Route SIGINT/SIGTERM to ``callback`` for the rest of the shutdown (aiohttp removes the
    loop's handlers when its cleanup ends). Where the loop cannot take signal handlers (Windows),
    plain ``signal.signal`` handlers hand the call to the loop; off the main thread, nothing."""
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        try:
            loop.add_signal_handler(sig, callback)
        except NotImplementedError:
            with contextlib.suppress(ValueError):
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(callback))
        except (RuntimeError, ValueError):
            pass  # not the main thread (the bench serves the app from a thread)


def create_app(settings: Settings, engine_factory: keys.EngineFactory | None = None) -> web.Application:
    """Build the aiohttp application for ``settings``."""
    app = Application(
        middlewares=[error_middleware, forwarded_middleware, cors_middleware, auth_middleware, admission_middleware,
                     body_limit_middleware, slow_body_middleware],
        client_max_size=settings.max_body_bytes
    )
    app.on_response_prepare.append(add_cors_headers)
    check_default_webhook(settings)  # before anything loads: a refused WEBHOOK_URL stops start-up at once
    app[keys.SETTINGS] = settings
    app[keys.RECEIVING] = keys.Receiving(settings.max_receiving_bodies, settings.body_min_rate)
    app[keys.ENGINE_FACTORY] = engine_factory or default_engine_factory
    app[keys.GENERATE_SCHEMA] = generate_request_schema(settings)
    app[keys.STATIC_DIR] = find_static_dir()
    app[keys.OPENAPI] = keys.OpenApiDocument(functools.partial(build_spec, settings, __version__, ROUTES))
    app[keys.RATES] = RateWindow()
    app[keys.A1111_PROGRESS_POLL] = keys.LastPoll()
    app[keys.A1111_SKIPPED] = set()
    app[keys.A1111_JOBS] = set()
    app[keys.A1111_OPTIONS] = {}
    app[keys.STYLES] = StyleFile(settings.styles_file)
    app[keys.KEY_RING] = KeyRing(settings.keys_file)
    app[keys.WEBSOCKETS] = weakref.WeakSet()
    app.cleanup_ctx.extend(CONTEXTS)
    app.on_shutdown.append(drain)
    add_routes(app)
    return app
