"""Where clients reach the server: the scheme and host in front of a reverse proxy.

Behind a proxy (TLS termination, a public name) the request aiohttp sees is the proxy's, such as
``http`` to ``127.0.0.1:8001``. The proxy says what the client used in ``Forwarded`` (RFC 7239)
or ``X-Forwarded-Proto`` / ``X-Forwarded-Host``; those headers are believed only from a peer in
``TRUSTED_PROXIES``, since any client can send them. :func:`forwarded_middleware` hands the
handlers a request whose ``scheme`` and ``host`` are the client's (for the websocket origin check
and absolute URLs); :func:`public_base` is ``PUBLIC_URL`` when set, else that. Never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from yarl import URL

from ..config import Networks
from . import keys

# As .middleware's; importing it from there would be a cycle (middleware -> openai -> forwarded).
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST = "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # a DNS label (underscores: container names)
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")


def _list(header: str | None) -> list[str]:
    return [part.strip() for part in (header or "").split(",") if part.strip()]


def _address(node: str | None) -> str | None:
    """The IP address in a ``for=`` node or an ``X-Forwarded-For`` entry (without brackets or port)."""
    if not node:
        return None
    if node.startswith("["):
        return node[1:].partition("]")[0]
    return node.rpartition(":")[0] if node.count(":") == 1 else node


def _proto(value: str | None) -> str | None:
    value = (value or "").strip().lower()
    return value if value in ("http", "https") else None


def _host(value: str | None) -> str | None:
    value = (value or "").strip()
    return value.lower() if _HOST.fullmatch(value) else None


def client_view(request: web.BaseRequest, trusted: Networks) -> tuple[str | None, str | None]:
    """The scheme and host the client used, as the trusted proxies in front report them (each
    ``None`` when not reported, or when the peer is not a trusted proxy).

    With a chain of proxies, each adds what it received; the hops are walked from the nearest,
    as long as the one that sent it is trusted too, so the answer is the outermost trusted view.
    """
    if not trusted.covers(request.remote):
        return None, None
    if hdrs.FORWARDED in request.headers:
        hops = request.forwarded  # one mapping per proxy, the nearest last
        i = len(hops) - 1
        while i > 0 and trusted.covers(_address(hops[i].get("for"))):
            i -= 1
        return _proto(hops[i].get("proto")), _host(hops[i].get("host"))
    senders = _list(request.headers.get(X_FORWARDED_FOR))
    skipped = 0
    while skipped < len(senders) - 1 and trusted.covers(_address(senders[-1 - skipped])):
        skipped += 1

    def hop(header: str) -> str | None:
        values = _list(request.headers.get(header))  # one value (overwritten), or one per proxy
        return values[max(0, len(values) - 1 - skipped)] if values else None

    return _proto(hop(X_FORWARDED_PROTO)), _host(hop(X_FORWARDED_HOST))


@web.middleware
async def forwarded_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Behind a trusted proxy, the handlers see the client's scheme and host."""
    scheme, host = client_view(request, request.app[keys.SETTINGS].trusted_proxies)
    if scheme or host:
        request = request.clone(scheme=scheme or request.scheme, host=host or request.host)
    return await handler(request)


def public_base(request: web.Request) -> str:
    """The URL clients reach the server at, without a trailing slash: ``PUBLIC_URL`` when set,
    else the (forwarded) scheme and host of ``request``."""
    return request.app[keys.SETTINGS].public_url or f"{request.scheme}://{request.host}"


def origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lower-cased and without a default port (so
    origins compare as browsers mean them); None for anything else."""
    try:
        parsed = URL(url.strip())
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}" + ("" if parsed.is_default_port() else f":{parsed.port}")
