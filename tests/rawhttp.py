"""Raw bytes over a socket, for requests no HTTP client will send (bad bytes, bad framing)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), (self.headers, self.body)
        return json.loads(self.body)


async def exchange(host: str, port: int, data: bytes, timeout: float = 30) -> RawResponse:
    """Send ``data``, read until the server closes (send ``Connection: close`` when it is valid HTTP)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body)


def request(method: str, path: str, headers: dict[str, bytes | str] | None = None, body: bytes = b"") -> bytes:
    """One HTTP/1.1 request as bytes (``Connection: close``; ``Content-Length`` added for a body)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: localhost", b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
