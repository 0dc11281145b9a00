"""Reading a JSON request body and validating it with a marshmallow schema.

Every way a body can be wrong ends here as an :class:`~sdxl_server.errors.ApiError`: 415 for a
non-JSON content type or a content coding nothing decodes, 400 for bytes that are not a JSON object (or do not decompress), 413 (from
aiohttp) for an oversized body, 422 naming every invalid field. A client that disconnects while
sending the body raises :class:`ClientDisconnected`, which the middleware logs in one line.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import hdrs, web
from marshmallow import Schema, ValidationError

from ..errors import InvalidBody, UnsupportedMediaType, ValidationFailed, short_message

# The codings aiohttp decodes: br and zstd only where their decoder is installed; without it
# aiohttp refuses the request before the app sees it (415 from .server).
DECODED = ("identity", "gzip", "deflate", "br", "zstd")


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (content_type.startswith("application/") and content_type.endswith("+json"))


async def read_json_object(request: web.Request, *, untyped_is_json: bool = False) -> dict[str, Any]:
    """The body as a dict; raises for anything else (``client_max_size`` bounds its size: the
    route's body limit).

    ``untyped_is_json``: a body sent without any ``Content-Type`` is read as JSON, as FastAPI
    (and so A1111) does."""
    untyped = untyped_is_json and hdrs.CONTENT_TYPE not in request.headers
    if not untyped and not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"send the body as JSON with 'Content-Type: application/json' (got {request.content_type!r})"
        )
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in DECODED:  # aiohttp would pass these bytes on undecoded
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed, or compressed with gzip or deflate"
        )
    raw = await _read(request)
    if not raw.strip():
        raise InvalidBody("the request body is empty: send a JSON object")
    try:
        body = json.loads(raw.decode((None if untyped else request.charset) or "utf-8"))
    except UnicodeDecodeError:
        raise InvalidBody("the request body is not valid UTF-8") from None
    except LookupError:
        raise InvalidBody(f"unknown charset {request.charset!r}") from None
    except json.JSONDecodeError as exc:
        raise InvalidBody(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidBody("the request body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise InvalidBody(f"the request body holds a value that cannot be read: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidBody(f"the request body must be a JSON object, not {_json_type(body)}")
    return body


def client_connected(request: web.Request) -> bool:
    """Whether the client is still there: a handler that waits long (a batch of jobs, a stream)
    goes on after its client leaves when aiohttp does not cancel it (``web.run_app``'s default)."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


class ClientDisconnected(Exception):
    """The client went away before its request was read; there is no one to answer."""


class UnreadableBody(InvalidBody):
    """The body's bytes do not decode (``Content-Encoding``) or its framing is broken. aiohttp stops
    reading such a body at the bad bytes, so the connection cannot carry another request: the
    middleware closes it after answering."""

    closes_connection = True


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.RequestPayloadError as exc:
        # Nothing more of this body will come; say so, or aiohttp tries to read the rest after the
        # answer and logs the same error again as an unhandled one.
        request.content.feed_eof()
        encoding = request.headers.get(hdrs.CONTENT_ENCODING)
        if encoding:
            raise UnreadableBody(
                f"the request body could not be decoded as Content-Encoding: {encoding}: "
                "send it compressed that way, or uncompressed without the header"
            ) from None
        raise UnreadableBody(f"the request body could not be read: {short_message(exc.__cause__ or exc)}") from None
    except ConnectionResetError:
        raise ClientDisconnected(f"the client disconnected before sending the whole body of {request.method} {request.path}") from None


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def validate(schema: Schema, body: dict[str, Any], names: dict[str, str] | None = None) -> dict[str, Any]:
    """Load ``body`` with ``schema``; raise :class:`ValidationFailed` naming every bad field.

    ``names`` maps our field names to a client's own (``guidance_scale`` -> ``cfg_scale``) when a
    compatible API's body was translated into ours, so errors name what that client sent.
    """
    try:
        return schema.load(body)
    except ValidationError as exc:
        problems = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        problems = {(names or {}).get(name, name): messages for name, messages in problems.items()}
        raise ValidationFailed(f"invalid request: check {', '.join(sorted(_paths(problems)))}", fields=problems) from None


def _paths(problems: dict[Any, Any], prefix: str = "") -> list[str]:
    """Where each problem is, as a client reads it: ``steps``, ``controlnet[0].weight``."""
    found: list[str] = []
    for name, inner in problems.items():
        path = f"{prefix}[{name}]" if isinstance(name, int) else f"{prefix}.{name}" if prefix else str(name)
        found.extend(_paths(inner, path) if isinstance(inner, dict) else [path])
    return found

