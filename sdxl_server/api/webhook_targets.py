"""Which webhook a request's job reports to: the request's own (``webhook``, ``webhook_events``),
else the caller's default. Every route that queues jobs asks :func:`job_webhook` (ours with the
request's fields, the OpenAI and A1111 routes without), so the default reaches all of them.
Never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..config import ConfigError, Settings
from ..errors import ValidationFailed
from ..jobs.webhooks import webhook_spec
from . import keys
from .forwarded import public_base
from .identity import IDENTITY
from .webhook_guard import AddressGuard


def default_webhook(request: web.Request) -> str | None:
    """The caller's default webhook URL, the one place it is chosen: its key's own (``webhook`` in
    its ``KEYS_FILE`` entry), else the server's ``WEBHOOK_URL``."""
    name, ring = request[IDENTITY].name, request.app.get(keys.KEY_RING)
    own = ring.webhook_of(name) if name is not None and ring is not None else None
    return own or request.app[keys.SETTINGS].webhook_url


def job_webhook(request: web.Request, data: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The webhook the job of ``request`` reports to (``{url, events, base}``), or None.

    ``data``: a validated request of ours, whose ``webhook`` and ``webhook_events`` win over the
    default. Raises :class:`ValidationFailed` naming the field for a URL the guard refuses, and for
    ``webhook_events`` with no webhook to send them to."""
    data = data or {}
    url, events = data.get("webhook"), data.get("webhook_events")
    if url is not None:
        reason = AddressGuard(request.app[keys.SETTINGS].webhook_allow).check_url(url)
        if reason is not None:
            raise ValidationFailed(f"webhook cannot be used: {reason}", fields={"webhook": [f"Refused: {reason}."]})
    if url is None:
        url = default_webhook(request)
        reason = None if url is None else AddressGuard(request.app[keys.SETTINGS].webhook_allow).check_url(url)
        if reason is not None:  # a key's default, which start-up has not checked
            raise ValidationFailed(f"the default webhook cannot be used: {reason}", fields={"webhook": [f"Refused: {reason}."]})
    if url is None:
        if events is not None:
            message = "webhook_events needs a webhook (this request names none and the server has no WEBHOOK_URL)"
            raise ValidationFailed(message, fields={"webhook_events": ["Needs a webhook."]})
        return None
    return webhook_spec(url, events, public_base(request))


def check_default_webhook(settings: Settings) -> None:
    """At start-up: a ``WEBHOOK_URL`` the guard refuses stops the server with a clear reason."""
    if settings.webhook_url is None:
        return
    reason = AddressGuard(settings.webhook_allow).check_url(settings.webhook_url)
    if reason is not None:
        raise ConfigError(f"WEBHOOK_URL={settings.webhook_url!r} cannot be used: {reason}")
