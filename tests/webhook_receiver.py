"""A real HTTP receiver of webhooks for the tests: it records what arrives and answers as told."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; ``answers`` (statuses) are used in order, then 200. ``hang``: the
    handler waits until ``release`` is set (a receiver that never answers)."""

    answers: list[int] = field(default_factory=list)
    hang: bool = False
    received: list[Delivery] = field(default_factory=list)
    arrived: asyncio.Queue = field(default_factory=asyncio.Queue)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    _runner: Any = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        delivery = Delivery(request.path, dict(request.headers), await request.read())
        self.received.append(delivery)
        self.arrived.put_nowait(delivery)
        if request.path == "/redirect":
            raise web.HTTPTemporaryRedirect(request.query.get("to", "/hook"))
        if request.path == "/endless":
            return await self._endless(request)
        if self.hang:
            await self.release.wait()
        return web.Response(status=self.answers.pop(0) if self.answers else 200, text="ok")

    @staticmethod
    async def _endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"x" * 65536
        while True:  # until the sender stops reading and drops the connection
            await response.write(chunk)

    async def next(self, timeout: float = 60.0) -> Delivery:
        return await asyncio.wait_for(self.arrived.get(), timeout)

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        self.release.set()
        await self._runner.cleanup()
