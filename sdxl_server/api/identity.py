"""Who a request comes from, and what it may do: set on every request by the key check
(:mod:`.security`), read where an answer depends on the caller. Never imports torch."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..jobs.owners import UNLIMITED, Limits
from .route_table import ALL_SCOPES, Scope


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: ``name`` is the name of its key in ``KEYS_FILE`` (a job's
    ``owner``), or None: the admin/legacy identity (the single ``API_KEY``, or anyone when the
    server has no keys) or a caller without a valid key (its scopes say which); what it may do
    (its scopes) and how much (its :class:`Limits`)."""

    name: str | None
    scopes: frozenset[Scope]
    limits: Limits = UNLIMITED

    @property
    def anonymous(self) -> bool:
        """No key of ``KEYS_FILE``: its jobs are the admin/legacy owner's (``owner`` None)."""
        return self.name is None

    @property
    def sees_all(self) -> bool:
        """Whether it sees, follows and cancels every owner's jobs (``admin``), or only its own."""
        return Scope.ADMIN in self.scopes

    @property
    def owner_filter(self) -> str | None:
        """The owner whose jobs it may see, for the queue's lookups: None for all (admin)."""
        return None if self.sees_all else (self.name or "")  # "": no job's owner (names are never empty)


OPEN = Identity(None, ALL_SCOPES)  # no API_KEY, no KEYS_FILE: anyone may do anything
ANONYMOUS = Identity(None, frozenset({Scope.PUBLIC}))  # keys needed, no valid key sent
API_KEY_HOLDER = Identity(None, ALL_SCOPES)  # the single API_KEY: one admin key, owning what it queues as before
# Where the auth middleware puts the caller: ``request[IDENTITY]``. A typed key where aiohttp has
# them (3.14 on); the older releases setup.cfg allows take this plain string.
IDENTITY = web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "sdxl_server.identity"
