"""The shape of the route table (:data:`.routes.ROUTES`): what the server declares about a route,
once, beside the view that answers it.

A route's policy used to be five path lists that had to agree (the router, the OpenAPI
operations, the image body limits, the key check, the error shape); each is now a field, read by
the module that applies it: :mod:`.openapi` (``summary``, ``responses``, ``body``...), :mod:`.limits`
(``limit``), :mod:`.security` (``scope``, ``output_file``), :mod:`.middleware` (``family``).

``scope`` names what a caller may do, for the multi-user issue: today any valid key has every
scope, and without ``API_KEY`` everyone has. ``cost`` is read by nothing yet: it is a request's
admission weight before its body is read (0 for reads and controls, 1 for a request that queues
generation work), which the multi-user issue will charge against a caller's share of the queue.
Never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aiohttp import web
from marshmallow import Schema

from ..config import Settings

JSON = "application/json"
MULTIPART = "multipart/form-data"
EVENT_STREAM = "text/event-stream"  # a 200 that is JSON, or server-sent events when the client streams
BODY_ERRORS = (400, 413, 415, 422)
NULL = {"type": "null"}

View = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Scope(Enum):
    """What a caller may do. Listed from the least to the most trusted."""

    PUBLIC = "public"  # anyone: the page, health, the API description
    READ = "read"  # listings, jobs, progress, events, output files, prompt checks
    GENERATE = "generate"  # queueing generation work, and stopping it
    ADMIN = "admin"  # the server's shared state: rescans, the default model, metrics


ALL_SCOPES = frozenset(Scope)


class Family(Enum):
    """The error shape a route's clients parse (:func:`.middleware.error_response`)."""

    OWN = "own"  # {"error", "message", "fields"?}
    OPENAI = "openai"  # {"error": {"message", "type", "param", "code"}}
    A1111 = "a1111"  # ours, plus FastAPI's "detail"


class BodyLimit(Enum):
    NORMAL = "normal"  # MAX_BODY_BYTES
    IMAGE = "image"  # MAX_IMAGE_BODY_BYTES: the routes whose JSON or form carries images


@dataclass(frozen=True)
class Access:
    """Who may call and in which shape errors come: what a route declares, and what the prefix
    fallback (:data:`.routes.UNMATCHED`) declares for a request that matches no route."""

    scope: Scope
    family: Family = Family.OWN
    # Public unless OUTPUTS_NEED_KEY (the key may come as ?token=: <img> URLs); with KEYS_FILE the
    # view asks for a signed URL instead (api/signed_urls.py).
    output_file: bool = False

    def required_scope(self, settings: Settings) -> Scope:
        if self.output_file and (settings.keys_file is not None or not settings.outputs_need_key):
            return Scope.PUBLIC
        return self.scope


@dataclass(frozen=True)
class Route:
    """One method on one path. ``view`` None: the static files (a prefix, served when ``static/``
    exists). ``summary`` None: not in the OpenAPI document."""

    method: str
    path: str
    view: View | None
    scope: Scope
    summary: str | None = None
    # status -> component name, (content type, description, schema), or None: an error (ERRORS).
    # 401 is added by the OpenAPI builder wherever the route needs the key.
    responses: Mapping[int, Any] = field(default_factory=dict, hash=False)
    body: str | None = None  # the request body's component name (a request schema, see openapi.py)
    body_type: str = JSON
    query: type[Schema] | None = None
    tags: tuple[str, ...] = ()
    family: Family = Family.OWN
    limit: BodyLimit = BodyLimit.NORMAL
    cost: int = 0
    output_file: bool = False

    @property
    def access(self) -> Access:
        return Access(self.scope, self.family, self.output_file)

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.path))

    @property
    def documented(self) -> bool:
        return self.summary is not None


@dataclass(frozen=True)
class Prefix:
    """The access of requests under ``prefix`` that match no route (404, 405): the key is still
    asked for (an unauthenticated client learns nothing of which paths exist), and errors keep the
    family's shape, aiohttp's own refusals before routing included."""

    prefix: str
    access: Access


def errors(*statuses: int) -> dict[int, None]:
    return dict.fromkeys(statuses)


def array_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}
