"""Live progress over the websocket, as a client sees it."""

from __future__ import annotations

import asyncio
import base64
import io
import time

from aiohttp import WSCloseCode, WSMsgType
from doubles import GatedEngine
from PIL import Image
from wsclient import TERMINAL, events_until_terminal, next_event

from sdxl_server.api import keys
from sdxl_server.jobs.events import EventHub


async def test_events_in_order_with_exactly_one_terminal(client):
    ws = await client.ws_connect("/api/v1/ws")
    snapshot = await next_event(ws)
    assert snapshot == {"type": "snapshot", "id": None, "jobs": []}
    resp = await client.post("/api/v1/jobs", json={"prompt": "watch", "steps": 4})
    job_id = (await resp.json())["id"]
    events = await events_until_terminal(ws, job_id)

    assert all(e["id"] == job_id for e in events)
    types = [e["type"] for e in events]
    assert types == ["queued", "started", "progress", "progress", "progress", "progress", "completed"]
    assert events[0]["position"] == 1 and "eta_s" in events[0]
    assert events[1]["total_steps"] == 4
    progress = events[2:6]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]
    assert [e["progress"] for e in progress] == [0.25, 0.5, 0.75, 1.0]
    assert all(e["total_steps"] == 4 and e["elapsed_s"] >= 0 for e in progress)
    completed = events[-1]
    assert completed["image_url"] == f"/outputs/images/{job_id}.png"
    assert completed["meta"]["steps"] == 4
    assert all(len(str(e)) < 2048 for e in events)  # messages stay small

    resp = await client.post("/api/v1/generate", json={"prompt": "again", "steps": 1})  # nothing more for the old job
    other = (await resp.json())["id"]
    later = await events_until_terminal(ws, other)
    assert not any(e["id"] == job_id and e["type"] in TERMINAL for e in later)


async def test_follow_one_job_and_a_late_subscriber_gets_a_snapshot(client):
    resp = await client.post("/api/v1/generate", json={"prompt": "done already", "steps": 1})
    done = await resp.json()
    ws = await client.ws_connect(f"/api/v1/ws?job={done['id']}")
    snapshot = await next_event(ws)
    assert snapshot["type"] == "snapshot" and snapshot["id"] == done["id"]
    assert snapshot["job"]["status"] == "succeeded"
    assert snapshot["job"]["image_url"] == done["image_url"]


async def test_reconnecting_mid_job_resumes_from_the_snapshot(make_client, settings):
    client = await make_client(settings, engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    resp = await client.post("/api/v1/jobs", json={"prompt": "resume", "steps": 3})
    job_id = (await resp.json())["id"]
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)
    ws = await client.ws_connect(f"/api/v1/ws?job={job_id}")
    snapshot = await next_event(ws)
    assert snapshot["job"]["status"] == "running" and snapshot["job"]["position"] == 0
    engine.gate.set()
    events = await events_until_terminal(ws, job_id)
    assert [e["type"] for e in events] == ["progress"] * 3 + ["completed"]


async def test_previews_are_small_jpegs_every_few_steps(client, settings):
    resp = await client.post("/api/v1/jobs", json={"prompt": "preview", "steps": 4, "width": 128, "height": 64})
    job_id = (await resp.json())["id"]
    ws = await client.ws_connect(f"/api/v1/ws?job={job_id}&preview=1")
    events = await events_until_terminal(ws, job_id)
    previews = [e for e in events if e["type"] == "preview"]
    assert [p["step"] for p in previews] == [2, 4]  # PREVIEW_EVERY=2
    for preview in previews:
        header, data = preview["image"].split(",", 1)
        assert header == "data:image/jpeg;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "JPEG" and image.size == (16, 8)  # one pixel per 8x8 block
        assert len(preview["image"]) < 8192

    plain = await client.ws_connect("/api/v1/ws")
    await next_event(plain)
    resp = await client.post("/api/v1/jobs", json={"prompt": "no preview", "steps": 2})
    events = await events_until_terminal(plain, (await resp.json())["id"])
    assert "preview" not in [e["type"] for e in events]


async def test_a_client_that_never_reads_does_not_hold_up_generation_or_others(client):
    stalled = await client.ws_connect("/api/v1/ws?preview=1")  # never reads a single frame
    reader = await client.ws_connect("/api/v1/ws?preview=1")
    await next_event(reader)
    for n in range(3):
        resp = await client.post("/api/v1/generate", json={"prompt": f"busy {n}", "steps": 6})
        assert resp.status == 200
        job_id = (await resp.json())["id"]
        events = await events_until_terminal(reader, job_id)
        assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3, 4, 5, 6]
    assert not stalled.closed or stalled.close_code == WSCloseCode.POLICY_VIOLATION


async def test_a_client_too_far_behind_is_closed_with_policy_violation(client):
    ws = await client.ws_connect("/api/v1/ws")
    await next_event(ws)
    hub = client.app[keys.HUB]
    for n in range(400):  # a burst the connection cannot drain before the limit
        hub.publish({"type": "queued", "id": f"job{n}", "position": n})
    while True:
        message = await ws.receive(timeout=30)
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            break
    assert ws.close_code == WSCloseCode.POLICY_VIOLATION
    resp = await client.post("/api/v1/generate", json={"prompt": "still fine", "steps": 1})
    assert resp.status == 200


async def test_stale_progress_is_coalesced_but_terminal_events_kept():
    from sdxl_server.jobs.events import EventHub

    hub = EventHub(coalesce_after=2, max_pending=50)
    sub = hub.subscribe()
    hub.publish({"type": "started", "id": "a"})
    for step in range(1, 21):
        hub.publish({"type": "progress", "id": "a", "step": step})
    hub.publish({"type": "completed", "id": "a"})
    received = [(await sub.next()).event for _ in range(sub.pending)]
    assert [e["type"] for e in received] == ["started", "progress", "progress", "completed"]
    assert [e["step"] for e in received if e["type"] == "progress"] == [1, 20]  # the latest wins


async def test_shutdown_closes_websockets_going_away(client):
    ws = await client.ws_connect("/api/v1/ws")
    await next_event(ws)
    await client.app.shutdown()
    message = await ws.receive(timeout=30)
    assert message.type == WSMsgType.CLOSE
    assert message.data == WSCloseCode.GOING_AWAY


async def test_heartbeat_closes_a_dead_peer(make_client, settings):
    client = await make_client(settings.replace(ws_heartbeat=1.0))
    ws = await client.ws_connect("/api/v1/ws", autoping=False)
    await next_event(ws)
    pings = 0
    while True:  # never answer the server's pings: it must give up on us
        message = await ws.receive(timeout=30)
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            break
        assert message.type == WSMsgType.PING
        pings += 1
    assert pings >= 1


async def test_coalesced_events_never_arrive_out_of_order():
    from sdxl_server.jobs.events import EventHub

    hub = EventHub(coalesce_after=2, max_pending=50)
    sub = hub.subscribe()
    received = []
    for step in range(1, 9):
        hub.publish({"type": "progress", "id": "a", "step": step})
        if step == 4:
            received.append((await sub.next()).event)  # the client reads one, then falls behind again
    while sub.pending:
        received.append((await sub.next()).event)
    steps = [e["step"] for e in received]
    assert steps == sorted(steps) and steps[-1] == 8


async def test_a_ping_is_answered_however_its_json_is_formatted(client):
    ws = await client.ws_connect("/api/v1/ws")
    await next_event(ws)

    async def reply() -> dict:  # the pong comes at once (next_event's wait restarts at each heartbeat)
        message = await ws.receive(timeout=15)
        assert message.type == WSMsgType.TEXT, message
        return message.json()

    for ping in ('{"type":"ping"}', '{"type": "ping"}', '{ "type" : "ping" }\n', '{"id": null, "type": "ping"}', "ping"):
        await ws.send_str(ping)
        assert await reply() == {"type": "pong", "id": None}, ping
    for not_a_ping in ('{"type": "pong"}', '["ping"]', "[" * 2000, '{"type": "ping"'):
        await ws.send_str(not_a_ping)
    await ws.send_str('{"type": "ping"}')
    assert await reply() == {"type": "pong", "id": None}  # the others were ignored, the socket is fine


async def test_a_writer_ends_when_its_connection_does_even_if_its_cancel_is_lost():
    """Before Python 3.12, ``asyncio.wait_for`` loses a cancel that arrives as the awaited send
    completes; the writer then waited for its next event for ever, and so did its handler and the
    next shutdown. Ending the subscription ends the writer without any cancel."""
    from sdxl_server.api.websocket import _send_events

    sent = asyncio.Event()

    class Socket:
        async def send_str(self, text):
            sent.set()

    hub = EventHub()
    subscription = hub.subscribe()
    subscription.offer({"type": "snapshot", "id": None, "jobs": []})
    writer = asyncio.ensure_future(_send_events(Socket(), subscription))
    await sent.wait()  # the writer sent the snapshot; it waits for the next event
    hub.unsubscribe(subscription)  # the connection ended (its cancel never arrives)
    await asyncio.wait_for(writer, 5)
    assert writer.done() and writer.exception() is None


async def test_websockets_opened_and_closed_at_once_leave_no_handler_behind(client):
    sockets = [await client.ws_connect("/api/v1/ws") for _ in range(30)]
    await asyncio.gather(*(ws.close() for ws in sockets))
    started = time.perf_counter()
    await client.close()  # shutdown waits for every handler
    assert time.perf_counter() - started < 5
    assert len(client.app[keys.WEBSOCKETS]) == 0
