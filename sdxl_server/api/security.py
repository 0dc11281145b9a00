"""Who may call what: the API keys and cross-origin (CORS) rules, as two middlewares.

- ``API_KEY`` (one admin key) and ``KEYS_FILE``'s named keys (:mod:`.key_ring`): a route whose
  scope (in the route table, :mod:`.routes`) is not public needs a key that has it (a bearer
  token, an ``X-API-Key`` header, or HTTP Basic auth's password for A1111 clients), compared in
  constant time. No valid key: 401, the same answer whatever was wrong; a valid key without the
  route's scope: 403. Today that is every API route (``/api/``, ``/v1/``, ``/sdapi/``, ``/metrics``) and the
  websocket; ``/``, ``/health``, ``/static/``, ``/openapi.json`` and ``/internal/ping`` stay
  public, and the output files need the key only with ``OUTPUTS_NEED_KEY``. Requests that match
  no route follow their prefix (:data:`.routes.UNMATCHED`).
- Every request that passes carries its caller's :class:`Identity` under :data:`IDENTITY`.
- ``CORS_ORIGINS``: browsers on those origins may call the API; preflight ``OPTIONS`` is answered
  for every route, allowing the headers the preflight asks for (the origin is trusted, and client
  libraries add their own: the OpenAI SDK its ``x-stainless-*`` ones), as CORS libraries do with
  "allow every header"; a websocket's ``Origin`` must be the server's own (as a trusted proxy
  forwards it, or ``PUBLIC_URL``) or on the list.
Never imports torch.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_log import AccessLogger
from multidict import CIMultiDict

from ..errors import Forbidden, ForbiddenOrigin, InvalidBody, Unauthorized
from . import forwarded, keys
from .middleware import Handler
from .identity import ANONYMOUS, API_KEY_HOLDER, IDENTITY, OPEN, Identity
from .key_ring import padded
from .route_table import Access
from .routes import access_of

BEARER_CHALLENGE = CIMultiDict([(hdrs.WWW_AUTHENTICATE, 'Bearer realm="sdxl_server"')])
# The Basic challenge goes only to clients that tried Basic auth: sent to the web page's own
# requests, it would make the browser open its login dialog instead of the page's key prompt.
CHALLENGES = CIMultiDict([*BEARER_CHALLENGE.items(),
                          (hdrs.WWW_AUTHENTICATE, 'Basic realm="sdxl_server", charset="UTF-8"')])
WS_TOKEN_PROTOCOL = "bearer."
ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-API-Key"
MAX_REQUEST_HEADERS_CHARS = 2048  # a preflight's Access-Control-Request-Headers; browsers send a few names
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
EXPOSED_HEADERS = "Location, Retry-After"


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def basic_credentials(token: str) -> tuple[str, ...]:
    """The keys HTTP Basic credentials may carry: the password, and the whole ``user:password``
    (A1111 clients such as SillyTavern, Open WebUI and ``webuiapi`` can send only Basic auth, and
    their settings take ``user:password``). Undecodable credentials carry none."""
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        return ()
    _, colon, password = decoded.partition(":")
    return (password, decoded) if colon else ()  # RFC 7617: user-id ":" password


def presented_keys(request: web.Request, access: Access) -> tuple[str, ...]:
    """The keys a client sent: a bearer token, HTTP Basic credentials, an ``X-API-Key`` header, or,
    where headers cannot be set (browser websockets, ``<img>`` URLs), a ``bearer.KEY`` websocket
    subprotocol or ``?token=``."""
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "basic" and token.strip():
        return basic_credentials(token)
    key = presented_key(request, access)
    return (key,) if key is not None else ()


def presented_key(request: web.Request, access: Access) -> str | None:
    """The key a client sent other than by HTTP Basic auth (see :func:`presented_keys`)."""
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.headers.get("X-API-Key"):
        return request.headers["X-API-Key"]
    if _is_websocket(request):
        for protocol in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(","):
            if protocol.strip().startswith(WS_TOKEN_PROTOCOL):
                return protocol.strip()[len(WS_TOKEN_PROTOCOL):]
    if _is_websocket(request) or access.output_file:
        return request.query.get("token")
    return None


def key_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing says nothing about the key.

    Compared as the bytes that were sent: a header that is not UTF-8 (aiohttp keeps such bytes as
    surrogates) is simply a wrong key, never an error."""
    return hmac.compare_digest(_raw(presented or ""), _raw(expected))


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # any str encodes, each to its own bytes


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[keys.SETTINGS]
    access = access_of(request)
    identity = identify(request, access)
    required = access.required_scope(settings)
    if request.method != "OPTIONS" and required not in identity.scopes:
        if identity is ANONYMOUS:  # no valid key: one answer whatever was wrong with it
            raise Unauthorized(
                "this server needs an API key: send 'Authorization: Bearer <key>', 'X-API-Key: <key>', "
                "or HTTP Basic auth with the key as the password (A1111 clients: 'user:<key>')",
                headers=CHALLENGES if _tried_basic(request) else BEARER_CHALLENGE,
            )
        raise Forbidden(f"this key may not do this: it needs the '{required.value}' scope")
    request[IDENTITY] = identity
    return await handler(request)


def identify(request: web.Request, access: Access) -> Identity:
    """The caller, from the keys it sent (public routes included, so a handler always knows): the
    single ``API_KEY`` (the admin/legacy identity), a key of ``KEYS_FILE``, or :data:`ANONYMOUS`;
    :data:`OPEN` when the server has neither."""
    expected = request.app[keys.SETTINGS].api_key
    ring = request.app[keys.KEY_RING]
    if not expected and not ring.in_use:
        return OPEN
    presented = presented_keys(request, access)
    # As many candidates are compared each time, each with every key (no short cut), so timing
    # says nothing about which matched, or why none did.
    legacy = [key_matches(key, expected) and i < len(presented) for i, key in enumerate(padded(presented))] if expected else []
    named = ring.match(presented) if ring.in_use else None
    if any(legacy):
        return API_KEY_HOLDER
    return named or ANONYMOUS


def _tried_basic(request: web.Request) -> bool:
    return request.headers.get(hdrs.AUTHORIZATION, "").lstrip().lower().startswith("basic")


def _origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    return "*" in allowed or origin.rstrip("/") in allowed


def _is_own_origin(request: web.Request, origin: str) -> bool:
    """The page's own origin: where this request came in (through trusted proxies, see
    :mod:`.forwarded`), or ``PUBLIC_URL``."""
    own = {forwarded.origin(f"{request.scheme}://{request.host}")}
    if request.app[keys.SETTINGS].public_url:
        own.add(forwarded.origin(request.app[keys.SETTINGS].public_url))
    return forwarded.origin(origin) in own - {None}


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights for allowed origins and check websocket origins (headers: :func:`add_cors_headers`)."""
    allowed = request.app[keys.SETTINGS].cors_origins
    origin = request.headers.get(hdrs.ORIGIN)
    if origin and _is_websocket(request) and not _is_own_origin(request, origin) and not _origin_allowed(origin, allowed):
        raise ForbiddenOrigin(f"websocket connections from {origin} are not allowed: add it to CORS_ORIGINS")
    if origin and _is_preflight(request):
        if not allowed or not _origin_allowed(origin, allowed):
            raise ForbiddenOrigin(f"cross-origin requests from {origin} are not allowed: add it to CORS_ORIGINS")
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: allowed_headers(request),
                hdrs.ACCESS_CONTROL_MAX_AGE: "600",
            },
        )
    return await handler(request)


def _is_preflight(request: web.Request) -> bool:
    return request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers


def allowed_headers(request: web.Request) -> str:
    """Our own headers and every one the preflight asks for (an allowed origin's page may send
    what it likes: its key is what guards the API). The names must be header names, and few."""
    asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
    if len(asked) > MAX_REQUEST_HEADERS_CHARS:
        raise InvalidBody(f"Access-Control-Request-Headers is too long: at most {MAX_REQUEST_HEADERS_CHARS} characters")
    names = [name.strip() for name in asked.split(",") if name.strip()]
    bad = next((name for name in names if not _HEADER_NAME.fullmatch(name)), None)
    if bad is not None:
        raise InvalidBody(f"Access-Control-Request-Headers names a header that is not a header name: {bad[:40]!r}")
    own = ALLOWED_HEADERS.split(", ")
    known = {name.lower() for name in own}
    extra = list(dict.fromkeys(name.lower() for name in names if name.lower() not in known))
    return ", ".join([*own, *extra])


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response to an allowed origin (errors included, so browsers can read them)."""
    allowed = request.app[keys.SETTINGS].cors_origins
    origin = request.headers.get(hdrs.ORIGIN)
    if not origin or not allowed or not _origin_allowed(origin, allowed):
        return
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS
    # A preflight's answer also depends on the headers it asked for (see allowed_headers).
    response.headers.add(hdrs.VARY, "Origin, Access-Control-Request-Headers" if _is_preflight(request) else "Origin")


SECRET_HEADERS = (hdrs.AUTHORIZATION, "X-API-Key")
SECRET_PARAMS = ("token", "sig")  # a key in a URL; a signed output URL's signature (it reads the file)


class _Redacted:
    """A request as the access log sees it: the same, with its secrets masked. (Not a clone:
    aiohttp refuses to clone a request whose body has been read.)"""

    def __init__(self, request: web.BaseRequest, rel_url: Any, headers: Any) -> None:
        self._request, self.rel_url, self.headers = request, rel_url, headers

    @property
    def path_qs(self) -> str:
        return str(self.rel_url)

    @property
    def query(self) -> Any:
        return self.rel_url.query

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log, with any ``token`` query parameter (an API key) and any ``sig`` (a signed
    output URL's) replaced by ``***``, and
    the credentials of ``Authorization`` and ``X-API-Key`` too, should a log format show headers."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request is not None:
            rel_url, headers = request.rel_url, request.headers
            if any(name in request.query for name in SECRET_PARAMS):
                rel_url = rel_url.with_query({name: ("***" if name in SECRET_PARAMS else value) for name, value in request.query.items()})
            if any(name in headers for name in SECRET_HEADERS):
                headers = CIMultiDict(headers)
                for name in SECRET_HEADERS:
                    if name in headers:  # keep the scheme ("Basic", "Bearer"), mask the credentials
                        scheme, _, secret = headers[name].partition(" ")
                        headers[name] = f"{scheme} ***" if secret and name == hdrs.AUTHORIZATION else "***"
            if rel_url is not request.rel_url or headers is not request.headers:
                request = _Redacted(request, rel_url, headers)  # type: ignore[assignment]
        super().log(request, response, time)
