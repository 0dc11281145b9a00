"""What a real server process does below the routes: with broken framing, bytes no HTTP client
sends, and clients that leave mid-request. Sent as raw bytes over a socket."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import uuid

import pytest
import rawhttp
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


def _json_post(encoding: str, body: bytes) -> bytes:
    return rawhttp.request(
        "POST", "/api/v1/generate", {"Content-Type": "application/json", "Content-Encoding": encoding}, body
    )


# What aiohttp refuses before any middleware runs: each must still be our JSON error.
MALFORMED = {
    "request line": (b"GARBAGE\r\n\r\n", "malformed HTTP request"),
    "header": (b"GET /health HTTP/1.1\r\nHost: localhost\r\nNo Colon Here\r\n\r\n", "malformed HTTP request"),
    "header too long": (
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n", "too long"
    ),
    "request line too long": (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", "too long"),
    "chunked and a length": (
        b"POST /api/v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        "malformed HTTP request",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_requests_aiohttp_cannot_parse_get_json_errors(server, case):
    data, needle = MALFORMED[case]
    resp = await rawhttp.exchange("127.0.0.1", server.port, data)
    assert resp.status == 400
    body = resp.json()
    assert body["error"] == "bad_request" and needle in body["message"], body


def _decodable(*modules: str) -> bool:
    for module in modules:
        try:
            if importlib.util.find_spec(module):
                return True
        except ModuleNotFoundError:  # its package is missing
            continue
    return False


@pytest.mark.parametrize(
    ("encoding", "modules"),
    [("br", ("brotli", "brotlicffi")), ("zstd", ("compression.zstd", "backports.zstd"))],
)
async def test_an_encoding_without_a_decoder_is_415_json(server, encoding, modules):
    if _decodable(*modules):
        pytest.skip(f"aiohttp decodes {encoding} here (see test_a_compressed_body_is_read)")
    resp = await rawhttp.exchange("127.0.0.1", server.port, _json_post(encoding, b"\x0b\x02\x80{}\x03"))
    assert resp.status == 415
    body = resp.json()
    assert body["error"] == "unsupported_media_type" and "gzip" in body["message"], body
    assert "install" not in body["message"]  # the server's own packages are not the client's business


@pytest.mark.parametrize("encoding", ["compress", "x-custom", "gzip, gzip"])
async def test_an_encoding_nobody_decodes_is_415_json(server, encoding):
    resp = await rawhttp.exchange("127.0.0.1", server.port, _json_post(encoding, b'{"prompt": "x"}'))
    assert resp.status == 415
    body = resp.json()
    assert body["error"] == "unsupported_media_type" and encoding in body["message"], body
