"""What keys used: ``GET /api/v1/usage`` (a key its own; an admin key every key's, or one), the
per-key figures the metrics read at each scrape, and each owner's limits as the queue reads them
(the keys file's, read again when it changes). Never imports torch.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields, validate as check

from ..errors import NotFound
from ..jobs.owners import UNLIMITED, Limits
from ..jobs.queue import JobQueue
from ..jobs.quotas import LimitsOf
from ..jobs.states import JobStatus
from . import keys
from .identity import IDENTITY
from .metrics import key_label
from .route_table import Scope
from .validation import validate

MAX_DAYS = 31


class UsageQuerySchema(Schema):
    """Query of ``GET /api/v1/usage``."""

    days = fields.Integer(load_default=1, validate=check.Range(min=1, max=MAX_DAYS),
                          metadata={"description": "How many UTC days, today included."})
    key = fields.String(load_default=None, validate=check.Length(min=1, max=128),
                        metadata={"description": "One key's name (admin keys; others may name only their own)."})


def limits_lookup(app: web.Application) -> LimitsOf:
    """Each owner's limits as they are now (the keys file may be read again while jobs wait);
    the admin/legacy owner (None) and names no longer in the file: none."""

    def limits_of(owner: str | None) -> Limits:
        if owner is None:
            return UNLIMITED
        ring = app.get(keys.KEY_RING)
        return ring.limits_of(owner) if ring is not None else UNLIMITED

    return limits_of


def limits_dict(limits: Limits) -> dict[str, Any]:
    """A key's limits as JSON (lists for the models and LoRAs)."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(limits).items()}


def per_key_figures(queue: JobQueue) -> dict[str, dict[str, float]]:
    """For the metrics: each owner with jobs waiting or running or with usage today."""
    figures: dict[str, dict[str, float]] = {}
    for job in queue.active():
        entry = figures.setdefault(key_label(job.owner), {})
        state = "running" if job.status is JobStatus.RUNNING else "waiting"
        entry[state] = entry.get(state, 0) + 1
    for owner, used in queue.quotas.usage.today_all().items():
        entry = figures.setdefault(key_label(owner), {})
        entry.update(images_today=used.images, gpu_seconds_today=used.gpu_seconds)
    return figures


async def usage(request: web.Request) -> web.Response:
    """``GET /api/v1/usage?days=1&key=NAME``: jobs, images and GPU-seconds per UTC day, with the
    key's limits and when the daily ones reset. A key sees its own; an admin key every key's."""
    query = validate(UsageQuerySchema(), dict(request.query))
    identity = request[IDENTITY]
    admin = Scope.ADMIN in identity.scopes
    if query["key"] is not None and not admin and query["key"] != identity.name:
        raise NotFound(f"no key named {query['key'][:64]!r}")  # as if absent: other keys are not revealed
    owner = query["key"] if query["key"] is not None else (None if admin else identity.name)
    mine_only = query["key"] is not None or not admin
    report = await request.app[keys.USAGE].report(owner if mine_only else None, query["days"], mine_only)
    queue = request.app[keys.QUEUE]
    if not mine_only:  # every key of the file, those that used nothing too
        listed = {entry["key"] for entry in report["keys"]}
        report["keys"] += [{"key": name, "days": {}} for name in request.app[keys.KEY_RING].names if name not in listed]
    for entry in report["keys"]:
        entry["limits"] = limits_dict(queue.quotas.limits_of(entry["key"]))
    return web.json_response(report)
