"""The HTTP side of webhooks: one bounded, guarded POST per delivery (the ``Sender`` of
:mod:`sdxl_server.jobs.webhook_delivery`).

Each call has a time limit (``WEBHOOK_TIMEOUT`` in all, a connection within a third of it) and
reads at most ``MAX_ANSWER_BYTES`` of the answer (a receiver's body is not needed; a huge one is
cut off, not waited for). Every address connected to passes the SSRF guard
(:mod:`.webhook_guard`), which the connector's resolver applies; redirects are not followed
unless ``WEBHOOK_REDIRECTS`` allows some, and then each target is checked again and the same
signed POST sent there. No proxy from the environment is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from ..config import Settings
from ..jobs.webhook_delivery import Answer
from .webhook_guard import AddressGuard, GuardedResolver, Refused

MAX_ANSWER_BYTES = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)


class WebhookClient:
    """Sends deliveries over one connection pool; :meth:`close` it at shutdown."""

    def __init__(self, settings: Settings, resolver: AbstractResolver | None = None) -> None:
        """``resolver``: where names are looked up (aiohttp's default; tests give their own)."""
        self.guard = AddressGuard(settings.webhook_allow)
        self._timeout_s = settings.webhook_timeout
        self._redirects = settings.webhook_redirects
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=GuardedResolver(self.guard, resolver), limit=32, ttl_dns_cache=10),
            timeout=aiohttp.ClientTimeout(total=self._timeout_s, connect=self._timeout_s / 3),
            trust_env=False, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        await self._session.close()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body`` to ``url`` (and to the redirects allowed); how it went."""
        for hop in range(self._redirects + 1):
            refusal = self.guard.check_url(url)
            if refusal is not None:
                return Answer(None, f"the webhook target is refused: {refusal}", retry=False)
            try:
                async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                    await _drain(response)
                    location = response.headers.get("Location")
                    if response.status not in REDIRECTS or not location:
                        return _answer(response.status)
                    if hop == self._redirects:
                        return Answer(response.status, f"redirected to {location[:200]} (WEBHOOK_REDIRECTS={self._redirects})")
                    url = str(response.url.join(URL(location)))
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, Refused):
                    return Answer(None, f"the webhook target is refused: {exc.os_error}", retry=False)
                return Answer(None, f"could not connect: {exc.os_error or exc}")
            except asyncio.TimeoutError:
                return Answer(None, f"no answer within WEBHOOK_TIMEOUT={self._timeout_s:g} s")
            except (aiohttp.ClientError, ValueError) as exc:
                return Answer(None, f"the delivery failed: {type(exc).__name__}: {exc}"[:500])
        raise AssertionError("unreachable")  # the last hop returns


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read up to ``MAX_ANSWER_BYTES`` of the answer, no more (the rest is dropped with the connection)."""
    read = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        read += len(chunk)
        if read >= MAX_ANSWER_BYTES:
            response.close()
            return


def _answer(status: int) -> Answer:
    if 200 <= status < 300:
        return Answer(status)
    return Answer(status, f"the receiver answered HTTP {status}")
