"""The one place errors become responses: ``{"error": code, "message": ..., "fields"?: ...}``.

:func:`error_middleware` formats what handlers raise; :func:`protocol_error` what aiohttp refuses
before any handler runs (used by :mod:`.server`).
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import (
    ContentEncodingError,
    HttpProcessingError,
    LineTooLong,
)

from ..errors import ApiError, short_message
from .openai import error_body as openai_error_body
from .route_table import Access, Family, View
from .routes import access_of
from .validation import ClientDisconnected

log = logging.getLogger(__name__)

Handler = View  # a view, or the rest of the middleware chain

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer

# aiohttp's own HTTP errors, given stable codes.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def error_response(
    request: web.Request, status: int, body: dict, headers: dict[str, str] | None = None, access: Access | None = None
) -> web.Response:
    """The error as JSON, in the shape the client's API family expects (the route's ``family``, or
    for a request that matched none its prefix's): OpenAI's, ours plus A1111's ``detail``, or ours.
    ``access``: given where the request never reached the router (:mod:`.server`)."""
    family = (access or access_of(request)).family
    if family is Family.OPENAI:
        status, body = openai_error_body(status, body)
    elif family is Family.A1111:
        body = {**body, "detail": body["message"]}
    return web.json_response(body, status=status, headers=headers)


def _http_error_body(exc: web.HTTPException) -> dict:
    code = _HTTP_CODES.get(exc.status, "http_error")
    if exc.status == 404:
        message = "no such resource"
    elif exc.status == 405:
        message = f"method {getattr(exc, 'method', '')} is not allowed here; allowed: {', '.join(sorted(exc.allowed_methods))}"
    else:
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"the request body is too large: {message}"
    return {"error": code, "message": message}


def protocol_error(status: int, exc: BaseException | None) -> tuple[int, dict]:
    """The status and body for a request aiohttp refused before the application saw it (a bad
    request line or header, a line too long, a ``Content-Encoding`` it cannot decode)."""
    if status >= 500:
        return status, {"error": "internal_error", "message": "an unexpected error occurred; see the server log"}
    if isinstance(exc, ContentEncodingError):  # a coding with no decoder here (br without Brotli, zstd ...)
        detail = exc.message.split(". Please install")[0]
        return 415, {
            "error": "unsupported_media_type",
            "message": f"this server cannot decode the request's Content-Encoding ({detail}): "
                       "send the body uncompressed, or compressed with gzip or deflate",
        }
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "8190"
        message = f"the request line or a header is too long: at most {limit} bytes each"
    elif isinstance(exc, HttpProcessingError):
        detail = (exc.message or "").strip().splitlines()
        message = "malformed HTTP request" + (f": {detail[0].rstrip(':')}" if detail else "")
    else:
        message = "malformed HTTP request"
    return status, {"error": _HTTP_CODES.get(status, "http_error"), "message": short_message(message)}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn :class:`ApiError`, aiohttp HTTP errors and unexpected exceptions into JSON responses."""
    try:
        return await handler(request)
    except ClientDisconnected as exc:
        log.info("%s", exc)  # one line: nobody is left to answer, and it is not the server's fault
        return web.Response(status=CLIENT_CLOSED_REQUEST)  # never sent; the access log shows it
    except ApiError as exc:
        response = error_response(request, exc.status, exc.to_dict(), exc.headers)
        if exc.closes_connection:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        return error_response(request, exc.status, _http_error_body(exc), headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(
            request, 500, {"error": "internal_error", "message": "an unexpected error occurred; see the server log"}
        )
