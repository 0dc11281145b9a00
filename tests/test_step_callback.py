"""Nothing between steps but the device's work: the step callback reads no tensor values unless a
client wants a preview, and then only every PREVIEW_EVERY steps; on CUDA it never synchronises."""

from __future__ import annotations

import pytest
import torch
from doubles import SyncCheckingEngine, UntouchableLatentsEngine, WatchedLatentsEngine

from sdxl_server.api import keys


async def _events_until_done(ws) -> list[dict]:
    events = []
    async for message in ws:
        event = message.json()
        events.append(event)
        if event["type"] in ("completed", "failed", "cancelled"):
            break
    return events


async def test_without_preview_clients_the_callback_never_reads_the_latents(make_client, settings):
    client = await make_client(settings, engine_factory=UntouchableLatentsEngine)
    ws = await client.ws_connect("/api/v1/ws")  # progress, no previews
    resp = await client.post("/api/v1/generate", json={"prompt": "hands off", "steps": 4})
    assert resp.status == 200, await resp.text()  # a read would have raised and failed the job
    job_id = (await resp.json())["id"]
    events = [e for e in await _events_until_done(ws) if e.get("id") == job_id]
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3, 4]
    assert "preview" not in [e["type"] for e in events]
    assert client.app[keys.ENGINE].watched.reads == []


async def test_with_a_preview_client_the_latents_are_read_only_every_preview_every_steps(make_client, settings):
    client = await make_client(settings.replace(preview_every=3), engine_factory=WatchedLatentsEngine)
    ws = await client.ws_connect("/api/v1/ws?preview=1")
    resp = await client.post("/api/v1/generate", json={"prompt": "peek", "steps": 7})
    assert resp.status == 200, await resp.text()
    events = await _events_until_done(ws)
    assert [e["step"] for e in events if e["type"] == "preview"] == [3, 6, 7]  # and the last step
    read_at = sorted({step for step, _ in client.app[keys.ENGINE].watched.reads})
    assert read_at == [3, 6, 7]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the sync debug mode is CUDA's")
async def test_on_cuda_no_step_synchronises_the_device(make_client, settings):
    client = await make_client(settings.replace(device="cuda", preview_every=1), engine_factory=SyncCheckingEngine)
    ws = await client.ws_connect("/api/v1/ws?preview=1")
    resp = await client.post("/api/v1/generate", json={"prompt": "async", "steps": 8, "width": 128, "height": 128})
    assert resp.status == 200, await resp.text()  # a sync between steps raises and fails the job
    events = await _events_until_done(ws)
    assert [e["type"] for e in events].count("progress") == 8
    assert any(e["type"] == "preview" for e in events)  # previews arrived without a sync
