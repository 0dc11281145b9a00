"""A websocket client that reads events the way a user's client would."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType

from sdxl_server.jobs.states import TERMINAL_EVENTS as TERMINAL


async def next_event(ws) -> dict:
    # wait_for bounds the whole call: receive(timeout=) restarts at each ping the server's heartbeat sends
    message = await asyncio.wait_for(ws.receive(), 60)
    assert message.type == WSMsgType.TEXT, f"expected an event, got {message.type} {message.data!r} {message.extra!r}"
    return message.json()


async def events_until(ws, predicate) -> list[dict]:
    """Read events until one satisfies ``predicate`` (included)."""
    events = []
    while True:
        event = await next_event(ws)
        events.append(event)
        if predicate(event):
            return events


async def events_until_terminal(ws, job_id: str) -> list[dict]:
    return await events_until(ws, lambda e: e["id"] == job_id and e["type"] in TERMINAL)
