"""The application factory: middleware, state, routes.

State is created in the cleanup contexts of :mod:`.contexts` and kept under the typed keys of
:mod:`.keys`. The engine comes from ``engine_factory`` so tests can inject faults; the default
factory imports the pipeline (and torch) lazily, so the HTTP layer never does.
"""

from __future__ import annotations

import sysconfig
import weakref
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..config import Settings
from . import keys, websocket
from .contexts import CONTEXTS
from .forwarded import forwarded_middleware
from .middleware import error_middleware
from .openapi import build_spec
from .routes import add_routes
from .schemas import generate_request_schema
from .security import add_cors_headers, auth_middleware, cors_middleware
from .server import Application


def default_engine_factory(settings: Settings) -> Any:
    from ..pipeline.engine import Engine  # torch is imported here, once, not by the HTTP layer

    return Engine(settings)


def find_static_dir() -> Path:
    """``static/`` beside the package in a checkout, or where ``pip install`` put it."""
    checkout = Path(__file__).resolve().parents[2] / "static"
    if checkout.is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "sdxl-server" / "static"


async def drain(app: web.Application) -> None:
    """On SIGTERM/SIGINT: refuse new jobs, let the running one finish within SHUTDOWN_GRACE (else
    cancel it), then close the websockets with 1001 so clients see the job's last event first."""
    await app[keys.QUEUE].stop(app[keys.SETTINGS].shutdown_grace)
    await websocket.close_all(app)


def create_app(settings: Settings, engine_factory: keys.EngineFactory | None = None) -> web.Application:
    """Build the aiohttp application for ``settings``."""
    app = Application(
        middlewares=[error_middleware, forwarded_middleware, cors_middleware, auth_middleware], client_max_size=settings.max_body_bytes
    )
    app.on_response_prepare.append(add_cors_headers)
    app[keys.SETTINGS] = settings
    app[keys.ENGINE_FACTORY] = engine_factory or default_engine_factory
    app[keys.GENERATE_SCHEMA] = generate_request_schema(settings)
    app[keys.STATIC_DIR] = find_static_dir()
    app[keys.OPENAPI] = build_spec(settings, __version__)
    app[keys.A1111_PROGRESS_POLL] = keys.LastPoll()
    app[keys.WEBSOCKETS] = weakref.WeakSet()
    app.cleanup_ctx.extend(CONTEXTS)
    app.on_shutdown.append(drain)
    add_routes(app)
    return app
