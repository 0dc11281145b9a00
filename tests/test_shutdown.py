"""SIGTERM: stop taking jobs, let the running one finish within the grace period (or cancel it),
close websockets with 1001, leave no partial file, exit 0."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
from files import output_files
from live_server import LiveServer
from wsclient import events_until


@pytest.fixture
def server(tiny_cache, tmp_path, request):
    live = LiveServer(tiny_cache, tmp_path / "outputs", **request.param).wait_ready()
    yield live
    live.stop()


def _files(output_dir) -> list[str]:
    return output_files(output_dir)


async def _start_two_jobs(session, url):
    ws = await session.ws_connect(f"{url}/api/v1/ws")
    await ws.receive_json()
    first = (await (await session.post(f"{url}/api/v1/jobs", json={"prompt": "long", "steps": 40, "width": 256, "height": 256})).json())
    second = (await (await session.post(f"{url}/api/v1/jobs", json={"prompt": "waiting", "steps": 2})).json())
    await events_until(ws, lambda e: e["type"] == "progress" and e["id"] == first["id"])
    return ws, first, second


async def _rest(ws) -> tuple[list[dict], int | None]:
    events = []
    while True:
        message = await ws.receive(timeout=120)
        if message.type == aiohttp.WSMsgType.TEXT:
            events.append(message.json())
        else:
            return events, ws.close_code


@pytest.mark.slow(25)
@pytest.mark.parametrize("server", [{"SHUTDOWN_GRACE": "120"}], indirect=True)
async def test_sigterm_lets_the_running_job_finish(server):
    async with aiohttp.ClientSession() as session:
        ws, first, second = await _start_two_jobs(session, server.url)
        server.process.send_signal(signal.SIGTERM)
        events, close_code = await _rest(ws)
        await ws.close()
    ends = {e["id"]: e for e in events if e["type"] in ("completed", "failed", "cancelled", "suspended")}
    assert ends[first["id"]]["type"] == "completed"
    assert ends[second["id"]]["type"] == "suspended"  # kept queued in the job store for the next start
    assert ends[second["id"]]["error"]["error"] == "shutting_down"
    assert close_code == aiohttp.WSCloseCode.GOING_AWAY
    assert server.exit_code() == 0
    assert _files(server.output_dir) == [f"images/{first['id']}.png", f"metadata/{first['id']}.json"]


@pytest.mark.slow(30)
@pytest.mark.parametrize("server", [{"SHUTDOWN_GRACE": "0"}], indirect=True)
async def test_sigterm_without_grace_stops_cleanly_and_the_jobs_resume(server, tiny_cache):
    async with aiohttp.ClientSession() as session:
        ws, first, second = await _start_two_jobs(session, server.url)
        server.process.send_signal(signal.SIGTERM)
        events, close_code = await _rest(ws)
        await ws.close()
        with pytest.raises(aiohttp.ClientConnectionError):  # no longer listening
            await session.post(f"{server.url}/api/v1/jobs", json={"prompt": "late"})
    ends = [e for e in events if e["type"] in ("completed", "failed", "cancelled", "suspended")]
    assert [(e["id"], e["type"]) for e in ends] == [(second["id"], "suspended"), (first["id"], "suspended")]
    assert close_code == aiohttp.WSCloseCode.GOING_AWAY
    assert server.exit_code() == 0
    assert _files(server.output_dir) == []

    again = LiveServer(tiny_cache, server.output_dir).wait_ready()  # the same OUTPUT_DIR: both jobs run now
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{again.url}/api/v1/ws")
            snapshot = await ws.receive_json()
            assert [job["id"] for job in snapshot["jobs"]] == [first["id"], second["id"]]  # the original order
            await events_until(ws, lambda e: e["id"] == second["id"] and e["type"] == "completed")
            for job in (first, second):
                done = await (await session.get(f"{again.url}/api/v1/jobs/{job['id']}")).json()
                assert done["status"] == "succeeded"
            await ws.close()
    finally:
        again.stop()


async def test_jobs_submitted_during_the_grace_period_get_503(make_client, settings):
    client = await make_client(settings.replace(shutdown_grace=60))
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    resp = await client.post("/api/v1/jobs", json={"prompt": "finishing", "steps": 30, "width": 256, "height": 256})
    job_id = (await resp.json())["id"]
    waiting = await (await client.post("/api/v1/jobs", json={"prompt": "suspended", "steps": 1})).json()
    await events_until(ws, lambda e: e["type"] == "progress")
    draining = asyncio.create_task(client.app.shutdown())  # runs before the request below reaches the server
    resp = await client.post("/api/v1/generate", json={"prompt": "too late"})
    assert resp.status == 503
    assert (await resp.json())["error"] == "shutting_down"
    health = await client.get("/health")
    assert health.status == 503 and (await health.json())["status"] == "shutting_down"
    suspended = await client.get(f"/api/v1/jobs/{waiting['id']}")  # kept queued for the next start
    assert suspended.status == 200
    assert (await suspended.json())["status"] == "queued" and (await suspended.json())["position"] is None
    cancelled = await client.delete(f"/api/v1/jobs/{waiting['id']}")  # a client may still give it up
    assert cancelled.status == 200 and (await cancelled.json())["status"] == "cancelled"
    await draining
    job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded"
