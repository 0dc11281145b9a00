"""Request bodies that stop arriving: refused with 408 instead of holding a handler for ever, and
a bounded number receiving at once, so a slow-upload attack cannot starve /health."""

from __future__ import annotations

import asyncio
import json
import time

from sdxl_server.api import keys

HEAD = ("POST /api/v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Content-Length: 30000000\r\n\r\n").encode()


async def _stalled_upload(client):
    """Headers for a 30 MB body, then a few bytes, then nothing."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(HEAD + b'{"prompt": "')
    await writer.drain()
    return reader, writer


async def _until(condition, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        await asyncio.sleep(0.01)


async def test_a_body_that_stops_arriving_is_refused_with_408(client):
    client.app[keys.RECEIVING].window_s = 0.2
    reader, writer = await _stalled_upload(client)
    try:
        raw = await asyncio.wait_for(reader.read(), 30)  # answered, and the connection closed
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"408"
    assert json.loads(body)["error"] == "request_timeout" and "BODY_MIN_RATE" in json.loads(body)["message"]
    assert client.app[keys.RECEIVING].count == 0


async def test_uploads_beyond_the_limit_wait_their_turn_and_health_still_answers(client):
    receiving = client.app[keys.RECEIVING]
    receiving.limit, receiving.window_s = 2, 60.0
    stalled = [await _stalled_upload(client) for _ in range(2)]
    try:
        await _until(lambda: receiving.count == 2)
        reader, writer = await _stalled_upload(client)  # a third, still arriving
        raw = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split()[1] == b"503" and b"Retry-After: 5" in head
        assert json.loads(body)["error"] == "too_many_uploads"
        assert (await client.get("/health")).status == 200  # no body: never held up
    finally:
        for _, writer in stalled:
            writer.close()
    await _until(lambda: receiving.count == 0)


async def test_a_request_frees_its_slot_once_its_body_is_in_though_it_waits_for_its_image(make_client, settings):
    """A blocking generate waits for its job: its slot among MAX_RECEIVING_BODIES is free once its
    body has arrived, not when its answer is sent."""
    from doubles import GatedEngine

    engine = None

    def gated(s):
        nonlocal engine
        engine = GatedEngine(s)
        return engine

    client = await make_client(settings, engine_factory=gated)
    receiving = client.app[keys.RECEIVING]
    body = json.dumps({"prompt": "a slow upload", "steps": 1}).encode()
    head = ("POST /api/v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + body[:10])
        await writer.drain()
        await _until(lambda: receiving.count == 1)
        writer.write(body[10:])
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)  # its job runs; it waits
        assert receiving.count == 0
        engine.gate.set()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert raw.split()[1] == b"200"
    finally:
        engine.gate.set()
        writer.close()
