"""Where clients fetch a job's files: the one place their URLs are built.

A job's result keeps the server's own paths (``/outputs/images/{id}.png``, ``/outputs/metadata/{id}.json``)
in the job store; each answer turns them into the URLs a client should use now: the path itself
for files this server serves, or the object store's (``OUTPUT_PUBLIC_URL``, or presigned for
``URL_TTL`` seconds, so never stale in the store). Never imports torch.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import keys
from .forwarded import public_base

_URL_FIELDS = ("image_url", "meta_url")


def output_url(app: web.Application, path: str) -> str:
    """The URL of the output at ``path`` (``/outputs/{folder}/{filename}``) as a client fetches it."""
    folder, _, filename = path.removeprefix("/outputs/").partition("/")
    return app[keys.STORE].direct_url(folder, filename) or path


def with_output_urls(app: web.Application, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (a job, a job's event or its result) with its files' URLs as :func:`output_url` gives them."""
    if not any(name in body for name in (*_URL_FIELDS, "images", "job")):
        return body
    linked = {**body, **{name: output_url(app, body[name]) for name in _URL_FIELDS if isinstance(body.get(name), str)}}
    if isinstance(body.get("images"), list):
        linked["images"] = [with_output_urls(app, image) if isinstance(image, dict) else image for image in body["images"]]
    if isinstance(body.get("job"), dict):
        linked["job"] = with_output_urls(app, body["job"])
    return linked


def absolute_url(request: web.Request, url: str) -> str:
    """``url`` as an absolute URL: the object store's already is; a path is joined to ``PUBLIC_URL``
    (else the scheme and host the request came in with)."""
    return url if url.startswith(("http://", "https://")) else public_base(request) + url
