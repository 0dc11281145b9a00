"""Faults a client can cause: leaving mid-request, and crowds of websockets."""

from __future__ import annotations

import asyncio

import aiohttp
from doubles import GatedEngine
from wsclient import events_until, events_until_terminal, next_event

from sdxl_server.api import keys


async def test_a_client_leaving_a_blocking_generate_does_not_lose_the_image(make_client, settings):
    client = await make_client(settings, engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    ws = await client.ws_connect("/api/v1/ws")
    await next_event(ws)
    leaving = asyncio.create_task(client.post("/api/v1/generate", json={"prompt": "left behind", "steps": 2}))
    started = await events_until(ws, lambda e: e["type"] == "started")
    job_id = started[-1]["id"]
    leaving.cancel()  # the client hangs up while the job runs
    await asyncio.gather(leaving, return_exceptions=True)
    engine.gate.set()
    events = await events_until_terminal(ws, job_id)
    assert events[-1]["type"] == "completed"

    job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded"
    assert (await client.get(job["image_url"])).status == 200
    assert (settings.output_dir / "metadata" / f"{job_id}.json").is_file()
    resp = await client.post("/api/v1/generate", json={"prompt": "next", "steps": 1})
    assert resp.status == 200


async def test_many_websockets_at_once_all_hear_every_job(client):
    crowd = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))  # beyond one session's 100
    sockets = await asyncio.gather(*(crowd.ws_connect(client.make_url("/api/v1/ws")) for _ in range(200)))
    await asyncio.gather(*(next_event(ws) for ws in sockets))
    metrics = await (await client.get("/metrics")).text()
    assert "sdxl_websocket_connections 200.0" in metrics

    resp = await client.post("/api/v1/generate", json={"prompt": "for everyone", "steps": 3})
    assert resp.status == 200
    job_id = (await resp.json())["id"]
    heard = await asyncio.gather(*(events_until_terminal(ws, job_id) for ws in sockets))
    for events in heard:
        assert [e["type"] for e in events] == ["queued", "started", "progress", "progress", "progress", "completed"]
    await asyncio.gather(*(ws.close() for ws in sockets))
    await crowd.close()
    resp = await client.post("/api/v1/generate", json={"prompt": "after the crowd", "steps": 1})
    assert resp.status == 200
