"""The real application served in this process, on its own thread and event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ...api import keys
from ...api.app import create_app
from ...api.security import RedactingAccessLogger
from ...config import Settings
from .options import BenchError


class InProcessServer:
    """The real application on ``127.0.0.1`` (a free port), on its own thread and event loop.

    Clients (this module's coroutines) run on the caller's loop, so a client's work never
    queues behind the server's on one loop; the worker thread is the app's own executor.
    """

    def __init__(self, settings: Settings, engine: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.app: web.Application | None = None
        self.url = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-server", daemon=True)

    def start(self) -> InProcessServer:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise BenchError(f"the server did not start: {self._error}") from self._error
        if self.engine.state != "ready":
            self.stop()
            raise BenchError(f"the model did not load: {self.engine.error}")
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
        finally:
            self._started.set()
            self.loop.close()

    async def _serve(self) -> None:
        self.app = create_app(self.settings, engine_factory=lambda settings: self.engine)
        runner = web.AppRunner(self.app, access_log_class=RedactingAccessLogger, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            await self.app[keys.QUEUE].ready.wait()  # the preload has finished, loaded or failed
            self._stop = asyncio.Event()
            self._started.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn`` on the server's worker thread (the one that owns the pipeline)."""
        assert self.app is not None
        return self.app[keys.EXECUTOR].submit(fn, *args)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()


