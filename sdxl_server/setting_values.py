"""How each setting's text is read: the value parsers behind :mod:`sdxl_server.config`'s table.

Each parser takes the raw text of an environment variable or flag and returns the value, or raises
``ValueError``; its ``accepts`` attribute (where set) says what it accepts, for the one-line error.
Nothing here imports aiohttp or torch.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return value

    parse.accepts = f"one of {', '.join(choices)}"  # type: ignore[attr-defined]
    return parse


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    accepts = f"a whole number from {low}" + (f" to {high}" if high is not None else " up")

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(accepts) from None
        if value < low or (high is not None and value > high):
            raise ValueError(accepts)
        return value

    parse.accepts = accepts  # type: ignore[attr-defined]
    return parse


def _float_range(low: float, high: float) -> Callable[[str], float]:
    accepts = f"a number from {low:g} to {high:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(accepts) from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(accepts)
        return value

    parse.accepts = accepts  # type: ignore[attr-defined]
    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("true or false (also 1/0, yes/no, on/off)")


_bool.accepts = "true or false (also 1/0, yes/no, on/off)"  # type: ignore[attr-defined]


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("a path")
    return Path(raw.strip()).expanduser()


_ORIGIN_RE = re.compile(r"^https?://[^/\s]+$")


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN_RE.match(origin):
            raise ValueError(_origins.accepts)  # type: ignore[attr-defined]
    return origins


_origins.accepts = "a comma-separated list of origins like https://app.example.com or http://localhost:3000, or *"  # type: ignore[attr-defined]


class Networks(tuple):
    """IP networks (``TRUSTED_PROXIES``), written back the way they are configured."""

    def __str__(self) -> str:
        return ",".join(
            str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net) for net in self
        )

    def covers(self, address: str | None) -> bool:
        """Whether ``address`` (an IP address as text; anything else is not) is in one of them."""
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        return any(ip in net for net in self)


def _networks(raw: str) -> Networks:
    try:
        return Networks(ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError(_networks.accepts) from None  # type: ignore[attr-defined]


_networks.accepts = (  # type: ignore[attr-defined]
    "a comma-separated list of IP addresses or networks like 10.0.0.0/8 or ::1 (host bits unset), or nothing"
)


def _public_url(raw: str) -> str | None:
    text = raw.strip().rstrip("/")
    if not text:
        return None
    parts = urlsplit(text)
    if (
        parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username is not None
        or parts.query or parts.fragment
    ):
        raise ValueError(_public_url.accepts)  # type: ignore[attr-defined]
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(_public_url.accepts) from None  # type: ignore[attr-defined]
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "", ""))


_public_url.accepts = (  # type: ignore[attr-defined]
    "an http:// or https:// URL like https://images.example.com or https://example.com/sdxl (no query)"
)

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _output_store(raw: str) -> str | None:
    """``s3://bucket`` or ``s3://bucket/prefix`` (the prefix without slashes at its ends), or unset."""
    text = raw.strip()
    if not text or text.lower() == "local":
        return None
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not text.startswith("s3://") or not _BUCKET_RE.match(bucket) or "//" in prefix or any(c in prefix for c in "?#\\"):
        raise ValueError(_output_store.accepts)  # type: ignore[attr-defined]
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


_output_store.accepts = (  # type: ignore[attr-defined]
    "s3://bucket or s3://bucket/prefix (a bucket name of 3-63 lowercase letters, digits, dots and dashes), or local"
)

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _device(raw: str) -> str:
    value = raw.strip().lower()
    if not _DEVICE_RE.match(value):
        raise ValueError(_device.accepts)  # type: ignore[attr-defined]
    return value


_device.accepts = "auto, cpu, cuda, cuda:N or mps"  # type: ignore[attr-defined]

_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def _dtype(raw: str) -> str:
    value = raw.strip().lower()
    value = _DTYPE_ALIASES.get(value, value)
    if value not in ("auto", "float16", "bfloat16", "float32"):
        raise ValueError(_dtype.accepts)  # type: ignore[attr-defined]
    return value


_dtype.accepts = "auto, float16, bfloat16 or float32"  # type: ignore[attr-defined]


def _concurrency(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(_concurrency.accepts) from None  # type: ignore[attr-defined]
    if value < 0:
        raise ValueError(_concurrency.accepts)  # type: ignore[attr-defined]
    return value


_concurrency.accepts = (  # type: ignore[attr-defined]
    "0 (auto) or 1: one GPU runs one generation at a time, and a second in parallel only slows both and "
    "risks out-of-memory; let more requests wait with QUEUE_SIZE, or use BACKEND=ray for more GPUs"
)


def _webhook_url(raw: str) -> str | None:
    text = raw.strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or len(text) > 2048:
        raise ValueError(_webhook_url.accepts)  # type: ignore[attr-defined]
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(_webhook_url.accepts) from None  # type: ignore[attr-defined]
    return text


_webhook_url.accepts = "an http:// or https:// URL (at most 2048 characters), or nothing"  # type: ignore[attr-defined]


def _webhook_secret(raw: str) -> str | None:
    text = raw.strip()
    if not text:
        return None
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ValueError(_webhook_secret.accepts) from None  # type: ignore[attr-defined]
    if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise ValueError(_webhook_secret.accepts)  # type: ignore[attr-defined]
    return text


_webhook_secret.accepts = (  # type: ignore[attr-defined]
    "whsec_ followed by 24 to 64 random bytes in base64 (Standard Webhooks), e.g. "
    "python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
)

_HOST_NAME = re.compile(r"(?:\*\.)?[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")


class WebhookAllow(tuple):
    """``WEBHOOK_ALLOW``: host names (``*.example.com`` for its subdomains) and IP networks that
    webhooks may reach although the SSRF guard would refuse them (a receiver on the LAN)."""

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(entry for entry in self if isinstance(entry, str))

    @property
    def networks(self) -> Networks:
        return Networks(entry for entry in self if not isinstance(entry, str))

    def allows_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == name or (name.startswith("*.") and host.endswith(name[1:])) for name in self.hosts)

    def __str__(self) -> str:
        return ",".join(entry if isinstance(entry, str) else str(Networks([entry])) for entry in self)


def _webhook_allow(raw: str) -> WebhookAllow:
    entries: list[object] = []
    for part in (part.strip().lower() for part in raw.split(",")):
        if not part:
            continue
        try:
            entries.append(ipaddress.ip_network(part))
        except ValueError:
            if not _HOST_NAME.fullmatch(part) or part.replace(".", "").replace("-", "").isdigit():
                raise ValueError(_webhook_allow.accepts) from None  # type: ignore[attr-defined]
            entries.append(part)
    return WebhookAllow(entries)


_webhook_allow.accepts = (  # type: ignore[attr-defined]
    "a comma-separated list of host names (*.example.com for subdomains) and IP addresses or networks "
    "like 10.0.0.0/8, or nothing"
)
