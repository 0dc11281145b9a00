"""The HTTP server under the application: JSON for the errors aiohttp answers by itself.

aiohttp's low-level server refuses a request it cannot parse (a bad request line or header, a line
or headers too long, a ``Content-Encoding`` it cannot decode) with a ``text/plain`` 400 before any
middleware runs. :class:`Application` is aiohttp's, with a server whose request handler answers
those in JSON instead (:func:`.middleware.protocol_error`), so every error a client sees has the
same shape, whatever runs the app (``web.run_app``, the test server, the bench). Never imports torch.
"""

from __future__ import annotations

import warnings
from typing import Any

from aiohttp import web
from yarl import URL

from .middleware import error_response, protocol_error
from .routes import unmatched_access


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's connection handler; only :meth:`handle_error` differs."""

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:  # the client's mistake: one line, no traceback
            detail = " ".join((message or str(exc or status)).split())[:300]
            self.logger.info("refused a malformed request from %s: %s", request.remote, detail)
        if request.writer.output_size > 0:  # as aiohttp: an answer has begun, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        status, body = protocol_error(status, exc)
        # Refused before routing: the path's prefix decides the error's shape.
        response = error_response(request, status, body, access=unmatched_access(request.path))  # type: ignore[arg-type]
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


with warnings.catch_warnings():
    # aiohttp 3 discourages subclassing its Application (aiohttp 4 forbids it; setup.cfg pins < 4).
    # Building the server is the one thing changed, and the app is the one object every runner
    # (web.run_app, the test server) asks for its server.
    warnings.simplefilter("ignore", DeprecationWarning)

    class Application(web.Application):
        """``web.Application`` whose server answers malformed requests in JSON."""

        def _make_handler(self, **kwargs: Any) -> web.Server:
            server = super()._make_handler(**kwargs)
            return JsonErrorServer(
                server.request_handler, request_factory=server.request_factory,
                handler_cancellation=server.handler_cancellation, **server._kwargs,
            )

        def _make_request(self, message: Any, *args: Any, **kwargs: Any) -> web.Request:
            return super()._make_request(merged_leading_slashes(message), *args, **kwargs)


def merged_leading_slashes(message: Any) -> Any:
    """``//sdapi/v1/txt2img`` as ``/sdapi/v1/txt2img``: clients given a base URL with a trailing
    slash (``http://host:8001/``) send such paths, and A1111 (Starlette) answers them. Merged before
    routing, so the route, the key check and the error shape all see the one path."""
    if not message.path.startswith("//"):
        return message
    path = "/" + message.path.lstrip("/")
    return message._replace(path=path, url=URL.build(path=path.partition("?")[0], query_string=message.url.query_string,
                                                     encoded=True))
