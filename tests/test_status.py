"""The engine's status as the event loop reads it: snapshots the worker thread takes (after the
start, the load, each job), so no handler ever asks the engine (and its device) on the loop."""

from __future__ import annotations

import asyncio
import threading

from sdxl_server.api import keys
from sdxl_server.api.app import create_app
from sdxl_server.pipeline.engine import Engine


def _off_the_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # a worker (or executor) thread
    raise AssertionError("the engine was asked on the event loop")


class OffTheLoopEngine(Engine):
    """A real engine that fails whoever describes it, or reads its GPU memory, on the event loop."""

    def describe(self):
        _off_the_loop()
        return super().describe()

    def gpu_memory_allocated(self):
        _off_the_loop()
        return super().gpu_memory_allocated()


async def test_no_handler_describes_the_engine_on_the_event_loop(make_client, settings):
    client = await make_client(settings, engine_factory=OffTheLoopEngine)
    for path in ("/health", "/api/v1/info", "/", "/metrics", "/api/v1/models", "/sdapi/v1/memory", "/sdapi/v1/sd-vae"):
        resp = await client.get(path)
        assert resp.status == 200, (path, await resp.text())
    resp = await client.post("/api/v1/generate", json={"prompt": "described off the loop", "steps": 1})
    assert resp.status == 200, await resp.text()
    health = await (await client.get("/health")).json()
    assert health["model"]["state"] == "ready" and health["device"] == "cpu"


class SlowLoadEngine(Engine):
    """A real engine whose load waits until the test opens its gate."""

    def __init__(self, settings):
        super().__init__(settings)
        self.entered, self.gate = threading.Event(), threading.Event()

    def load(self):
        self.entered.set()
        self.gate.wait(60)
        super().load()


async def test_health_says_loading_while_the_preload_runs_then_ok(aiohttp_client, settings):
    app = create_app(settings, engine_factory=SlowLoadEngine)
    client = await aiohttp_client(app)
    engine = app[keys.ENGINE]
    try:
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.wait, 60)
        resp = await client.get("/health")
        body = await resp.json()
        assert resp.status == 503 and body["status"] == "loading"
        assert body["model"]["state"] == "loading" and not body["model"]["loaded"] and body["model"]["error"] is None
    finally:
        engine.gate.set()
    await app[keys.QUEUE].ready.wait()
    resp = await client.get("/health")
    body = await resp.json()
    assert resp.status == 200 and body["model"]["state"] == "ready" and body["model"]["load_seconds"] is not None
