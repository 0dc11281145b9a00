"""The SSRF guard of webhooks: which addresses a delivery may connect to.

By default a webhook may reach only public addresses: never loopback, private (RFC 1918, unique
local IPv6), link-local, cloud metadata (169.254.169.254, fd00:ec2::254, 100.100.100.200 ...),
shared (100.64.0.0/10), unspecified, multicast or reserved ones, nor those hidden in IPv4-mapped,
6to4 or NAT64 IPv6 addresses. ``WEBHOOK_ALLOW`` names the hosts and networks allowed anyway (a
receiver on the LAN; the tests' local receiver). The check is made on the addresses a name
resolves to, inside the HTTP client's resolver (:class:`GuardedResolver`), so the address
connected to is the address checked (no DNS rebinding between a check and the connection), and
again for every redirect's target; an IP address in the URL, which no resolver sees, is checked
by :meth:`AddressGuard.check_url`. Never imports torch.
"""

from __future__ import annotations

import ipaddress
import socket
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from ..config import WebhookAllow

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "192.0.0.192",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(OSError):
    """A webhook's target is one the guard refuses; the message says why (never retried)."""


def _embedded(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip.sixtofour:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def kind_of(ip: IPAddress) -> str | None:
    """What makes ``ip`` unreachable for webhooks (``"loopback"``, ``"private"`` ...), or None
    for a public address."""
    ip = _embedded(ip)
    checks = (
        (ip in METADATA, "cloud metadata"), (ip.is_loopback, "loopback"), (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"), (ip.is_multicast, "multicast"), (ip.is_private, "private"),
        (ip.is_reserved, "reserved"), (not ip.is_global, "not public"),
    )
    return next((kind for refused, kind in checks if refused), None)


class AddressGuard:
    """The addresses and URLs webhooks may reach (see the module's docstring)."""

    def __init__(self, allow: WebhookAllow) -> None:
        self.allow = allow

    def refusal(self, host: str, address: str) -> str | None:
        """Why ``host`` at ``address`` may not be reached, or None when it may."""
        if self.allow.allows_host(host):
            return None
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        if self.allow.networks.covers(str(_embedded(ip))) or self.allow.networks.covers(str(ip)):
            return None
        kind = kind_of(ip)
        if kind is None:
            return None
        where = host if host == str(ip) else f"{host} (at {ip})"
        return f"{where} is a {kind} address, which webhooks may not reach (WEBHOOK_ALLOW names those allowed)"

    def check_url(self, url: str) -> str | None:
        """Why ``url`` cannot be a webhook (not http(s), no host, an IP address the guard
        refuses), or None. Host names are checked when they are resolved."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            return "not a URL"
        if parsed.scheme not in ("http", "https") or not parsed.host or not parsed.is_absolute():
            return "not an http:// or https:// URL with a host"
        try:
            parsed.port  # noqa: B018 - raises on a bad port
        except ValueError:
            return "not a valid port"
        host = parsed.host.strip("[]")
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return self.refusal(host, "127.0.0.1") if host.rstrip(".").lower() == "localhost" else None
        return self.refusal(host, host)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses the guard allows: the client connects to
    nothing else. Raises :class:`Refused` when no address is left."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        reasons = [self._guard.refusal(host, entry["host"]) for entry in found]
        allowed = [entry for entry, reason in zip(found, reasons) if reason is None]
        if not allowed:
            raise Refused(next((reason for reason in reasons if reason), f"{host} has no address"))
        return allowed

    async def close(self) -> None:
        await self._inner.close()

