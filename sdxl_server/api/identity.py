"""Who a request comes from, and what it may do: set on every request by the key check
(:mod:`.security`), read where an answer depends on the caller. Never imports torch."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..jobs.owners import UNLIMITED, Limits
from .route_table import ALL_SCOPES, Scope

API_KEY_NAME = "api_key"  # the name of the one key, API_KEY; the multi-user issue names its keys


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: ``name`` None for an anonymous caller, else the key's name (a
    job's ``owner``); what it may do (its scopes) and how much (its :class:`Limits`)."""

    name: str | None
    scopes: frozenset[Scope]
    limits: Limits = UNLIMITED

    @property
    def anonymous(self) -> bool:
        return self.name is None


OPEN = Identity(None, ALL_SCOPES)  # no API_KEY: anyone may do anything
ANONYMOUS = Identity(None, frozenset({Scope.PUBLIC}))  # API_KEY set, no valid key sent
API_KEY_HOLDER = Identity(API_KEY_NAME, ALL_SCOPES)
# Where the auth middleware puts the caller: ``request[IDENTITY]``. A typed key where aiohttp has
# them (3.14 on); the older releases setup.cfg allows take this plain string.
IDENTITY = web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "sdxl_server.identity"
