"""The benchmark's client: the calls the sections time."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import aiohttp

from ...params import GenerationParams
from .options import BenchError, BenchOptions
from .server import InProcessServer
from .timed import GenerationRecord


class Client:
    """What the sections share: the server, its engine, one HTTP session and the options."""

    def __init__(self, server: InProcessServer, session: aiohttp.ClientSession, opts: BenchOptions) -> None:
        self.server = server
        self.engine = server.engine
        self.session = session
        self.opts = opts
        self.url = server.url
        key = server.settings.api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._seed = opts.seed + 1

    def fresh_seed(self) -> int:
        self._seed += 1
        return self._seed

    async def direct(self, params: GenerationParams) -> tuple[float, GenerationRecord]:
        """What a plain script does: ``Engine.generate`` and ``image.save(..., "PNG")`` (PIL's
        default level) on the worker thread, timed there."""

        def call() -> float:
            started = time.perf_counter()
            generation = self.engine.generate(params, lambda step, total, latents: None, lambda: False)
            for image in generation.images:
                image.save(io.BytesIO(), format="PNG")
            return time.perf_counter() - started

        seconds = await asyncio.wrap_future(self.server.run_in_worker(call))
        return seconds, self.engine.records[params.seed]

    async def generate(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """``POST /api/v1/generate``, timed end to end."""
        started = time.perf_counter()
        async with self.session.post(f"{self.url}/api/v1/generate", json=body, headers=self.headers) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise BenchError(f"POST /api/v1/generate answered {resp.status}: {data}")
        return time.perf_counter() - started, data

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(f"{self.url}/api/v1/jobs", json=body, headers=self.headers) as resp:
            data = await resp.json()
            if resp.status != 202:
                raise BenchError(f"POST /api/v1/jobs answered {resp.status}: {data}")
        return data

    async def health(self) -> float:
        started = time.perf_counter()
        async with self.session.get(f"{self.url}/health", headers=self.headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise BenchError(f"GET /health answered {resp.status}")
        return time.perf_counter() - started


