"""Request body limits: small everywhere (``MAX_BODY_BYTES``), large on the routes the table
declares ``BodyLimit.IMAGE`` (``MAX_IMAGE_BODY_BYTES``): those whose body carries images. A body
over its limit gets 413 before it is read in full."""

from __future__ import annotations

from aiohttp import web

from . import keys
from .middleware import Handler
from .route_table import BodyLimit
from .routes import route_of


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    if route is not None and route.limit is BodyLimit.IMAGE:
        request = request.clone(client_max_size=request.app[keys.SETTINGS].max_image_body_bytes)
    return await handler(request)
