"""Where clients fetch a job's files: the one place their URLs are built.

A job's result keeps the server's own paths (``/outputs/images/{id}.png``, ``/outputs/metadata/{id}.json``)
in the job store; each answer turns them into the URLs a client should use now: the object
store's (``OUTPUT_PUBLIC_URL``, or presigned for ``URL_TTL`` seconds), else the path itself for
files this server serves, signed (:mod:`.signed_urls`) when keys are in use (``KEYS_FILE``). So
nothing stale is kept in the store. Never imports torch.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import keys
from .forwarded import public_base
from .signed_urls import OUTPUTS_PREFIX, URL_FIELDS


def output_url(app: web.Application, path: str) -> str:
    """The URL of the output at ``path`` (``/outputs/{folder}/{filename}``) as a client fetches it."""
    if not path.startswith(OUTPUTS_PREFIX) or "?" in path:
        return path  # not a server path, or one already made a URL
    folder, _, filename = path.removeprefix(OUTPUTS_PREFIX).partition("/")
    direct = app[keys.STORE].direct_url(folder, filename)
    if direct is not None:
        return direct
    signer = app.get(keys.URL_SIGNER)
    return path if signer is None else signer.sign(path)


def with_output_urls(app: web.Application, body: Any) -> Any:
    """``body`` (a job, an event, a result; lists and dicts within, but not a request's ``params``)
    with every output URL under ``image_url`` / ``meta_url`` as :func:`output_url` gives it; a
    copy: the original (kept in memory and the job store) unchanged."""
    if isinstance(body, list):
        return [with_output_urls(app, item) for item in body]
    if not isinstance(body, dict):
        return body
    return {
        name: output_url(app, value) if name in URL_FIELDS and isinstance(value, str)
        else with_output_urls(app, value) if isinstance(value, (dict, list)) and name != "params"
        else value
        for name, value in body.items()
    }


def absolute_url(request: web.Request, url: str) -> str:
    """``url`` as an absolute URL: the object store's already is; a path is joined to ``PUBLIC_URL``
    (else the scheme and host the request came in with)."""
    return url if url.startswith(("http://", "https://")) else public_base(request) + url
