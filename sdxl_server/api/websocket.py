"""``GET /api/v1/ws``: live job events over a websocket.

On connect the client gets a ``snapshot`` of the job it follows (``?job=<id>``) or of every active
job, then each event as JSON text; a key sees its own jobs only (:mod:`.ownership`). A writer task per connection drains the connection's bounded
:class:`~sdxl_server.jobs.events.Subscription`; a client that falls too far behind, or whose socket
stops taking data, is closed with 1008 (policy violation) and can reconnect to a fresh snapshot.
Never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import WSCloseCode, WSMsgType, web

from ..jobs.events import Subscription
from . import keys
from .identity import IDENTITY
from .ownership import job_view, own_active, own_job

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0
PROTOCOL = "sdxl-server"  # offered beside "bearer.KEY" by browsers, which cannot set headers
TOO_SLOW = "too slow: events were not read in time"


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _is_ping(text: str) -> bool:
    """``ping``, or a JSON object whose ``type`` is ``"ping"`` however it is formatted; anything
    else a client sends is ignored (messages are at most WS_MAX_MESSAGE_BYTES)."""
    if text.strip() == "ping":
        return True
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(message, dict) and message.get("type") == "ping"


async def _close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, message=reason.encode()), SEND_TIMEOUT_S)


async def _send_events(ws: web.WebSocketResponse, subscription: Subscription) -> None:
    """Send the subscription's events until it closes (the connection ended) or falls behind.

    It stops on the subscription's close, not only on a cancel: ``asyncio.wait_for`` before
    Python 3.12 loses a cancel that arrives as the awaited send completes, which left writers (and
    so their handlers, and the next shutdown) waiting for ever."""
    while True:
        message = await subscription.next()
        if message is None:
            if subscription.too_slow:
                await _close(ws, WSCloseCode.POLICY_VIOLATION, TOO_SLOW)
            return
        try:
            await asyncio.wait_for(ws.send_str(message.text), SEND_TIMEOUT_S)
        except asyncio.TimeoutError:
            await _close(ws, WSCloseCode.POLICY_VIOLATION, TOO_SLOW)
            return
        except ConnectionError:
            return


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Follow one job (``?job=<id>``) or all; ``?preview=1`` adds JPEG previews every few steps."""
    app = request.app
    hub = app[keys.HUB]
    job_id = request.query.get("job") or None
    followed = await own_job(request, job_id) if job_id else None  # 404 before upgrading (another's too)
    settings = app[keys.SETTINGS]
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat, max_msg_size=settings.ws_max_message_bytes, protocols=(PROTOCOL,)
    )
    await ws.prepare(request)
    app[keys.WEBSOCKETS].add(ws)

    owner = request[IDENTITY].owner_filter  # a key follows its own jobs only
    subscription = hub.subscribe(job_id, previews=_flag(request.query.get("preview")), owner=owner)
    if followed is not None:
        subscription.offer({"type": "snapshot", "id": followed.id, "job": job_view(request, followed)})
    else:
        subscription.offer({"type": "snapshot", "id": None, "jobs": [job_view(request, j) for j in own_active(request)]})
    writer = asyncio.create_task(_send_events(ws, subscription))
    received = 0
    try:
        async for message in ws:
            received += 1
            if received > settings.ws_max_messages:
                await _close(ws, WSCloseCode.POLICY_VIOLATION, "too many messages")
                break
            if message.type == WSMsgType.TEXT and _is_ping(message.data):
                subscription.offer({"type": "pong", "id": job_id})
    finally:
        hub.unsubscribe(subscription)  # closes it: the writer stops even if the cancel below is lost
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        app[keys.WEBSOCKETS].discard(ws)
    return ws


async def close_all(app: web.Application) -> None:
    """On shutdown: close every websocket with 1001 (going away)."""
    await asyncio.gather(
        *(_close(ws, WSCloseCode.GOING_AWAY, "server shutdown") for ws in list(app[keys.WEBSOCKETS])),
    )
