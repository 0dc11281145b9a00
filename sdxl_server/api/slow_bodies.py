"""Request bodies that arrive too slowly: a client sending the headers, a few bytes of a large body,
then a byte now and then would hold its handler (and a file descriptor) for ever, and a few hundred
of them would leave none for ``/health``. While a request's body is still arriving it must keep
coming at ``BODY_MIN_RATE`` bytes a second (measured over windows of ``Receiving.window_s``, 10 s;
slower: the read fails with 408), and at most ``MAX_RECEIVING_BODIES`` requests may be receiving
at once (more: 503 before reading). Requests without a body are never held up. Never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from ..errors import BodyTooSlow, TooManyUploads
from . import keys
from .middleware import Handler

log = logging.getLogger(__name__)


async def _watch(request: web.Request, receiving: keys.Receiving) -> None:
    """Until the body has arrived: fail its read once a window brings less than the minimum."""
    content = request.content
    arrived = content.total_bytes
    while not content.is_eof():
        await asyncio.sleep(receiving.window_s)
        if content.is_eof():
            return
        if content.total_bytes - arrived < receiving.min_rate * receiving.window_s:
            log.info("a request body from %s stopped arriving (%d bytes in %.0f s); refused",
                     request.remote, content.total_bytes - arrived, receiving.window_s)
            content.set_exception(BodyTooSlow(
                f"the request body came slower than {receiving.min_rate} bytes a second (BODY_MIN_RATE)"))
            return
        arrived = content.total_bytes


@web.middleware
async def slow_body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.body_exists or request.content.is_eof():
        return await handler(request)
    receiving = request.app[keys.RECEIVING]
    if receiving.count >= receiving.limit:
        raise TooManyUploads(
            f"{receiving.limit} requests are sending their bodies already (MAX_RECEIVING_BODIES): retry later",
            headers={"Retry-After": "5"},
        )
    receiving.count += 1
    held = True

    def arrived() -> None:
        """The body is in (or the request is over): its slot is free, though its handler may go on
        for a whole generation."""
        nonlocal held
        if held:
            held = False
            receiving.count -= 1

    request.content.on_eof(arrived)
    watcher = asyncio.ensure_future(_watch(request, receiving))
    try:
        return await handler(request)
    finally:
        arrived()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
