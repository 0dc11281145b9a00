"""What a real server process does below the routes: with broken framing, bytes no HTTP client
sends, and clients that leave mid-request. Sent as raw bytes over a socket."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from live_server import LiveServer


@pytest.fixture(scope="module")
def server(tiny_cache, tmp_path_factory):
    live = LiveServer(tiny_cache, tmp_path_factory.mktemp("protocol") / "outputs").wait_ready()
    yield live
    live.stop()


async def test_a_client_that_leaves_mid_body_is_one_quiet_log_line(server):
    path = f"/api/v1/generate?probe={uuid.uuid4().hex}"  # finds this request's access log line
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    # "100 Continue" comes once the server is in the handler, about to read the body.
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
    mark = len(server.log)
    writer.write(b'{"prompt": "only the begi')
    await writer.drain()
    writer.transport.abort()
    await writer.wait_closed()
    await asyncio.to_thread(server.wait_for_log, re.escape(f'"POST {path} HTTP/1.1"'), timeout=60)
    lines = server.log[mark:]
    access = [line for line in lines if path in line]
    assert len(access) == 1 and '" 499 ' in access[0], access
    said = [line for line in lines if "disconnected" in line]
    assert len(said) == 1 and "the client disconnected before sending the whole body of POST /api/v1/generate" in said[0]
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line or '" 500 ' in line], lines
