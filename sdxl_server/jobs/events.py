"""Fan-out of job events to websocket subscribers, each with its own bounded send queue.

The queue publishes on the event loop; :class:`EventHub` encodes each event once and hands it to
the subscribers that follow its job. A subscriber's pending events are bounded: a ``position``
event always replaces the pending one of the same job (so a subscriber holds at most one per
waiting job, whatever QUEUE_SIZE is, and they never count as falling behind); once more than
``coalesce_after`` wait, a new ``progress`` or ``preview`` event replaces the pending one of the
same job too (the latest wins); other events (``queued``, ``started``, terminal ones) are always
kept, and a subscriber with more than ``max_pending`` of them waiting is marked too slow, for its
connection to close. Publishing never waits, so one slow client never slows generation or the
others.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import OrderedDict
from typing import Any

Event = dict[str, Any]

COALESCED = ("progress", "preview")  # once a subscriber falls behind
REPLACED = ("position",)  # always: the latest position is all that matters


class Message:
    """An event and its JSON text, encoded once however many subscribers send it."""

    __slots__ = ("event", "_text")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = json.dumps(self.event, separators=(",", ":"), ensure_ascii=False)
        return self._text


class Subscription:
    """One connection's view: which job it follows (None: all), whether it wants previews,
    and its pending events."""

    def __init__(
        self, job_id: str | None, previews: bool, *, coalesce_after: int, max_pending: int, owner: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.previews = previews
        self.owner = owner  # only this owner's jobs' events (None: every owner's)
        self._coalesce_after = coalesce_after
        self._max_pending = max_pending
        self._pending: OrderedDict[Any, Message] = OrderedDict()
        self._replaceable = 0  # pending events that never count as falling behind
        self._counter = itertools.count()
        self._ready = asyncio.Event()
        self.too_slow = False
        self.closed = False  # its connection has ended: its writer stops, whatever happened to a cancel

    def wants(self, event: Event, owner: str | None = None) -> bool:
        if event["type"] == "preview" and not self.previews:
            return False
        if self.owner is not None and owner != self.owner:
            return False
        return self.job_id is None or event.get("id") == self.job_id

    def offer(self, message: Message | Event) -> None:
        """Queue an event without ever waiting."""
        if self.too_slow or self.closed:
            return
        if not isinstance(message, Message):
            message = Message(message)
        kind = message.event["type"]
        key: Any = next(self._counter)
        if kind in REPLACED or (kind in COALESCED and len(self._pending) - self._replaceable >= self._coalesce_after):
            key = (kind, message.event.get("id"))
        stale = self._pending.pop(key, None)  # a stale event of the same kind and job gives way to this one,
        self._pending[key] = message  # which goes last, so events never arrive out of order
        if kind in REPLACED and stale is None:
            self._replaceable += 1
        if len(self._pending) - self._replaceable > self._max_pending:
            self.too_slow = True
            self._pending.clear()
        self._ready.set()

    def close(self) -> None:
        """No more events: a writer waiting in :meth:`next` gets None now."""
        self.closed = True
        self._pending.clear()
        self._ready.set()

    async def next(self) -> Message | None:
        """The oldest pending event; None once the subscriber is too slow or closed."""
        while not self._pending and not self.too_slow and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        if self.too_slow or self.closed:
            return None
        key, message = self._pending.popitem(last=False)
        if isinstance(key, tuple) and key[0] in REPLACED:
            self._replaceable -= 1
        return message

    @property
    def pending(self) -> int:
        return len(self._pending)


class EventHub:
    """Subscribers and the events published to them (all on the event loop)."""

    def __init__(self, *, coalesce_after: int = 8, max_pending: int = 256) -> None:
        self._subscriptions: set[Subscription] = set()
        self._coalesce_after = coalesce_after
        self._max_pending = max_pending

    def subscribe(self, job_id: str | None = None, previews: bool = False, owner: str | None = None) -> Subscription:
        """Events of ``job_id`` (None: every job), of ``owner``'s jobs only if given."""
        subscription = Subscription(
            job_id, previews, coalesce_after=self._coalesce_after, max_pending=self._max_pending, owner=owner
        )
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        subscription.close()

    def publish(self, event: Event, owner: str | None = None) -> None:
        """Hand ``event`` (of a job of ``owner``) to every subscriber that follows it."""
        message = Message(event)  # encoded at most once, when the first subscriber sends it
        for subscription in self._subscriptions:
            if subscription.wants(event, owner):
                subscription.offer(message)

    def wants_previews(self, job_id: str) -> bool:
        """Whether anyone would receive a preview of ``job_id`` (read from the worker thread:
        a stale answer only costs or skips one preview)."""
        return any(s.previews and s.job_id in (None, job_id) for s in list(self._subscriptions))

