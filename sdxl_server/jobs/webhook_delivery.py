"""Delivering the webhook outbox: at least once, signed, retried with backoff for a bounded time.

:class:`Dispatcher` runs on the event loop. It takes the due rows of the outbox (:mod:`.outbox`),
at most ``concurrency`` at a time, signs each per the Standard Webhooks specification (the
``standardwebhooks`` reference library: ``webhook-id`` is the row's id, the same on every retry,
so receivers drop duplicates; ``webhook-timestamp``; ``webhook-signature``, HMAC-SHA256 with
``WEBHOOK_SECRET``), and hands it to a :class:`Sender` (the HTTP client with the SSRF guard lives
in ``api/webhook_client.py``: this package never imports aiohttp). A 2xx answer delivers it; any
other answer, or none, schedules a retry after an exponential backoff with jitter, until
``WEBHOOK_RETRY_FOR`` seconds after the event, when it is marked failed; a target the guard
refuses fails at once. Every outcome is written to the row, which is what ``GET
/api/v1/jobs/{id}`` shows. A row being sent when the server dies is still pending in the
database, and is sent again at the next start. Time comes from a :class:`Clock`, which tests
replace to pass minutes without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from standardwebhooks import Webhook

from .. import __version__
from . import outbox
from .store import JobStore

log = logging.getLogger(__name__)

RETRY_FIRST_S = 5.0  # the first retry's pause; each next one doubles, up to RETRY_MAX_S
RETRY_MAX_S = 3600.0
STORE_RETRY_S = 5.0  # after the job store failed to answer the dispatcher


@dataclass(frozen=True)
class Answer:
    """How one attempt went: the HTTP status (None when no answer came), why it failed (None
    after a 2xx), and whether trying again could help (not for a target the guard refuses)."""

    status: int | None
    error: str | None = None
    retry: bool = True

    @property
    def delivered(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


class Sender(Protocol):
    """Sends one signed delivery (``api/webhook_client.py``'s ``WebhookClient``)."""

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer: ...


class Clock(Protocol):
    """The dispatcher's time: ``now()`` (Unix seconds) and a wait cut short by an event."""

    def now(self) -> float: ...

    async def wait(self, event: asyncio.Event, timeout: float | None) -> None: ...


class SystemClock:
    """Real time."""

    def now(self) -> float:
        return time.time()

    async def wait(self, event: asyncio.Event, timeout: float | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def backoff(attempts: int, rng: random.Random) -> float:
    """The pause after ``attempts`` failed attempts: doubling from ``RETRY_FIRST_S`` up to
    ``RETRY_MAX_S``, the second half of it drawn at random (so receivers that come back are not
    hit by every sender at once)."""
    ceiling = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(attempts - 1, 30))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def signed_headers(secret: str | None, delivery_id: str, body: bytes, at: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (unsigned without ``WEBHOOK_SECRET``)."""
    headers = {
        "Content-Type": "application/json", "User-Agent": f"sdxl-server/{__version__} (webhooks)",
        "webhook-id": delivery_id, "webhook-timestamp": str(int(at)),
    }
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(delivery_id, datetime.fromtimestamp(at, timezone.utc), body)
    return headers


class Dispatcher:
    """Sends the outbox's due rows and records each outcome (see the module's docstring)."""

    def __init__(
        self, store: JobStore, sender: Sender, wakeup: asyncio.Event, *, secret: str | None, retry_for: float,
        clock: Clock | None = None, rng: random.Random | None = None, concurrency: int = 8,
    ) -> None:
        self._store, self._sender, self._wakeup = store, sender, wakeup
        self._secret, self._retry_for = secret, retry_for
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._concurrency = concurrency
        self._busy: dict[str, asyncio.Task] = {}
        self._warned = bool(secret)  # of unsigned deliveries, once

    @property
    def sending(self) -> int:
        """Deliveries in flight now."""
        return len(self._busy)

    async def run(self) -> None:
        """Until cancelled: send what is due, then wait for the next due row or a new one."""
        while True:
            self._wakeup.clear()
            try:
                timeout = await self._send_due()
            except Exception as exc:  # noqa: BLE001 - the job store failed: try again later
                log.warning("the webhook outbox cannot be read (%s); trying again in %.0f s", exc, STORE_RETRY_S)
                timeout = STORE_RETRY_S
            await self._clock.wait(self._wakeup, timeout)

    async def _send_due(self) -> float | None:
        """Start the due rows there is room for; how long until the next one is due (None: no
        row is waiting, or no room: a new row or a finished send wakes the loop)."""
        free = self._concurrency - len(self._busy)
        if free > 0:
            for row in await self._store.run(outbox.due, self._clock.now(), free, list(self._busy)):
                self._busy[row["id"]] = asyncio.get_running_loop().create_task(self._deliver(row))
        if len(self._busy) >= self._concurrency:
            return None
        next_at = await self._store.run(outbox.next_due, list(self._busy))
        return None if next_at is None else max(0.0, next_at - self._clock.now())

    async def _deliver(self, row: dict[str, Any]) -> None:
        release_in = 0.0
        try:
            await self._store.run(outbox.record_attempt, row["id"], self._outcome(row, await self._attempt(row)))
        except Exception:  # noqa: BLE001 - the row stays pending, and is sent again after a pause
            log.exception("the outcome of webhook %s could not be recorded", row["id"])
            release_in = STORE_RETRY_S
        finally:
            asyncio.get_running_loop().call_later(release_in, self._release, row["id"])

    def _release(self, delivery_id: str) -> None:
        self._busy.pop(delivery_id, None)
        self._wakeup.set()

    async def _attempt(self, row: dict[str, Any]) -> Answer:
        if not self._warned:
            self._warned = True
            log.warning("WEBHOOK_SECRET is not set: webhooks are sent unsigned (receivers cannot verify them)")
        try:
            body = row["payload"].encode()
            headers = signed_headers(self._secret, row["id"], body, time.time())  # receivers check it against their clock
            return await self._sender.send(row["url"], body, headers)
        except Exception as exc:  # noqa: BLE001 - a bug in one send must not end the dispatcher
            log.exception("sending webhook %s failed", row["id"])
            return Answer(None, f"the delivery failed: {type(exc).__name__}: {exc}"[:500])

    def _outcome(self, row: dict[str, Any], answer: Answer) -> dict[str, Any]:
        now = self._clock.now()
        outcome: dict[str, Any] = {"last_at": now, "last_status": answer.status, "last_error": answer.error}
        if answer.delivered:
            log.info("webhook %s (job %s, %s) delivered", row["id"], row["job_id"], row["event"])
            return {**outcome, "state": outbox.DELIVERED, "delivered_at": now, "next_at": row["next_at"]}
        retry_at = now + backoff(row["attempts"] + 1, self._rng)
        if not answer.retry or retry_at > row["created_at"] + self._retry_for:
            log.warning("webhook %s (job %s, %s) given up: %s", row["id"], row["job_id"], row["event"], answer.error)
            return {**outcome, "state": outbox.FAILED, "next_at": row["next_at"]}
        if row["attempts"] == 0:
            log.warning("webhook %s (job %s, %s) failed (%s); retrying", row["id"], row["job_id"], row["event"], answer.error)
        return {**outcome, "state": outbox.PENDING, "next_at": retry_at}

    async def close(self) -> None:
        """Stop the sends in flight (their rows stay pending: sent again at the next start)."""
        tasks = list(self._busy.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
