"""The ``webhooks`` section: how long after a job ends its signed webhook reaches a local receiver."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from .client import Client
from .options import WEBHOOK_SECRET, BenchError
from .stats import percentile, summarize


async def _receiver(arrived: asyncio.Queue) -> tuple[web.AppRunner, str]:
    """A receiver on loopback that verifies each delivery and notes when it came."""
    verifier = Webhook(WEBHOOK_SECRET)

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        came = time.time()
        arrived.put_nowait((came, verifier.verify(body, dict(request.headers)), request.headers["webhook-id"]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


async def section_webhooks(client: Client) -> dict[str, Any]:
    """One small job at a time with a webhook; latency is the receipt's time minus the job's
    ``finished_at`` (the moment its end was recorded, which writes the outbox row)."""
    opts = client.opts
    arrived: asyncio.Queue = asyncio.Queue()
    runner, url = await _receiver(arrived)
    latencies, ids = [], []
    try:
        body = opts.body(width=opts.memory_size, height=opts.memory_size, steps=opts.memory_steps, webhook=url)
        for _ in range(opts.webhook_jobs):
            job = await client.submit({**body, "seed": client.fresh_seed()})
            came, payload, delivery_id = await asyncio.wait_for(arrived.get(), opts.timeout_s)
            data = payload["data"]
            if data["id"] != job["id"] or data["status"] != "succeeded":
                raise BenchError(f"the webhook said {payload['type']} of {data['id']}, not the end of {job['id']}")
            latencies.append(came - data["finished_at"])
            ids.append(delivery_id)
    finally:
        await runner.cleanup()
    return {
        "jobs": opts.webhook_jobs,
        "size": opts.memory_size,
        "latency_ms": summarize(latencies, 1000, 2),
        "p95_ms": round(percentile(latencies, 95) * 1000, 2) if latencies else None,
        "duplicates": len(ids) - len(set(ids)),
        "target_p95_ms": 1000,
    }
