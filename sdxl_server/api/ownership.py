"""Whose jobs a caller sees, and how their results are shown to it.

A key of ``KEYS_FILE`` sees, lists, follows and cancels only its own jobs (any other is absent:
the same 404); ``admin`` (and the single ``API_KEY``, and anyone on a server without keys) sees
every owner's. With keys in use, every output URL a caller is shown is signed
(:mod:`.signed_urls`). Never imports torch.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..jobs.describe import describe
from ..jobs.job import Job
from . import keys
from .identity import IDENTITY, Identity


def may_see(identity: Identity, job: Job) -> bool:
    return identity.sees_all or job.owner == identity.name


def present(app: web.Application, body: Any) -> Any:
    """``body`` as a caller is shown it: its output URLs signed when keys are in use."""
    signer = app.get(keys.URL_SIGNER)
    return body if signer is None else signer.signed(body)


def job_view(request: web.Request, job: Job) -> dict[str, Any]:
    """The job as the caller sees it (``GET /api/v1/jobs/{id}``, the list, websocket snapshots)."""
    return present(request.app, describe(request.app[keys.QUEUE], job))


async def own_job(request: web.Request, job_id: str) -> Job:
    """The caller's job ``job_id`` (any owner's, for admin); another's is :class:`NotFound` as if absent."""
    return await request.app[keys.QUEUE].find(job_id, request[IDENTITY].owner_filter)


def own_active(request: web.Request) -> list[Job]:
    """The caller's running jobs, then its waiting ones in order."""
    identity = request[IDENTITY]
    return [job for job in request.app[keys.QUEUE].active() if may_see(identity, job)]
