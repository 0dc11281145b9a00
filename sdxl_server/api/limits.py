"""Request body limits: small everywhere (``MAX_BODY_BYTES``), large on the routes that carry
images (``MAX_IMAGE_BODY_BYTES``). A body over its limit gets 413 before it is read in full."""

from __future__ import annotations

from aiohttp import web

from . import keys
from .middleware import Handler

IMAGE_ROUTES = frozenset({
    "/api/v1/generate", "/api/v1/jobs", "/sdapi/v1/img2img", "/v1/images/edits", "/v1/images/variations",
})


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "POST" and request.path in IMAGE_ROUTES:
        request = request.clone(client_max_size=request.app[keys.SETTINGS].max_image_body_bytes)
    return await handler(request)
