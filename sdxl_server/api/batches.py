"""Requests for more images than one pipeline call may make (``MAX_BATCH``), for the compatible APIs.

OpenAI clients may ask for ``n`` up to 10 and A1111 clients for any ``batch_size`` x ``n_iter``;
the images are made by consecutive jobs of at most ``MAX_BATCH`` images each, and image ``i`` of
the whole request still uses seed ``seed + i``, as one large batch would. Never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from ..jobs.states import JobStatus
from ..params import MAX_SEED, GenerationParams
from . import image_inputs, keys
from .validation import client_connected

log = logging.getLogger(__name__)


@dataclass
class Made:
    """What a request made: each image's ``{id, image_url, meta}``, the first job's id, and whether
    an interrupt stopped it early."""

    images: list[dict[str, Any]] = field(default_factory=list)
    first_job: str = ""
    interrupted: bool = False


async def generate_images(
    request: web.Request, params: GenerationParams, count: int, *, partial: bool = False,
    skipped: set[str] | None = None, names: Mapping[str, str] | None = None, track: set[str] | None = None,
    warnings: list[str] | None = None,
) -> Made:
    """Make ``count`` images like ``params`` in jobs of at most ``MAX_BATCH``.

    A cancelled job raises (409), unless ``partial``: then the images made so far are returned, as
    A1111 answers an interrupted request (a job stopped early by its interrupt gives the image of
    the latents so far, and no more jobs run); a job whose id is in ``skipped`` does not end the
    request: the rest of it goes on (A1111's skip). Each job's id is in ``track`` while it is awaited.
    Once the client has gone, no further job is queued (the running one ends as jobs do)."""
    app = request.app
    per_call = app[keys.SETTINGS].max_batch
    made = Made()
    for start in range(0, count, per_call):
        if start and not client_connected(request):
            log.info("the client of a %d-image request left after %d images; the rest are not made", count, start)
            break
        chunk = replace(params, num_images=min(per_call, count - start), seed=(params.seed + start) % (MAX_SEED + 1))
        # its input images are kept until it holds them
        job, _ = await image_inputs.submit(request, chunk, names=names, warnings=tuple(warnings or ()))
        made.first_job = made.first_job or job.id
        tracked = track if track is not None else set()
        tracked.add(job.id)
        try:
            await job.wait()
        finally:
            tracked.discard(job.id)
        cancelled = job.status is JobStatus.CANCELLED
        if not (partial and cancelled):
            result = job.outcome()  # raises for a failed job (or a cancelled one, unless partial)
            made.images.extend(result.get("images") or [{"id": result["meta"]["id"], "image_url": result["image_url"], "meta": result["meta"]}])
        if partial and (cancelled or job.stop_early_requested()):
            if skipped is not None and job.id in skipped:
                skipped.discard(job.id)
                continue
            made.interrupted = True
            break
    return made
