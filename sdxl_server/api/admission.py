"""Admission: a key's requests per minute, charged before a request's body is read.

Each route's ``cost`` (the route table: 1 for a request that queues generation work, 0 for reads
and controls) is charged against the caller's ``requests_per_minute`` (:class:`.rates.RateWindow`).
Over it, a 429 naming the limit and when it allows the next request, in the route's error shape.
The middleware also counts every refusal of a key's limits, by key and limit, for the metrics
(the queue's refusals too: they pass through it).
Never imports torch.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import NotAllowed, OverLimit
from . import keys
from .identity import IDENTITY, Identity
from .middleware import Handler
from .routes import route_of


def charge(request: web.Request, identity: Identity) -> None:
    """Charge ``request``'s cost to ``identity``'s requests per minute (if it has that limit)."""
    per_minute = identity.limits.requests_per_minute
    if per_minute is None:
        return
    route = route_of(request)
    if route is not None and route.cost:
        request.app[keys.RATES].charge(identity.name, route.cost, per_minute)


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After the key check: the request's cost charged, and each refusal of a limit counted."""
    identity = request.get(IDENTITY)
    try:
        if identity is not None and request.method != "OPTIONS":
            charge(request, identity)
        return await handler(request)
    except (OverLimit, NotAllowed) as exc:
        metrics = request.app.get(keys.METRICS)
        if metrics is not None:
            metrics.refused(identity.name if identity is not None else None, exc.limit)
        raise
