"""A job as a client sees it: ``GET /api/v1/jobs/{id}``, the job list and websocket snapshots."""

from __future__ import annotations

import time
from typing import Any

from .job import Job
from .queue import JobQueue
from .states import JobStatus


def describe(queue: JobQueue, job: Job) -> dict[str, Any]:
    """The job as a client sees it (``GET /api/v1/jobs/{id}``)."""
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        "position": queue.position(job),
        "step": job.step,
        "total_steps": job.total_steps,
        "progress": job.progress,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "params": job.params.to_dict(),
    }
    if not job.status.terminal:
        eta = queue.eta_seconds(job)
        body["eta_s"] = None if eta is None else round(eta, 2)
        if job.status is JobStatus.QUEUED and eta is not None:
            own = queue.estimate.job_seconds(job.params) or 0.0
            body["estimated_start_at"] = round(time.time() + eta - own, 3)
        body["estimated_finish_at"] = None if eta is None else round(time.time() + eta, 3)
    if job.status is JobStatus.RUNNING and job.cancel_requested():
        body["cancel_requested"] = True
    if job.result is not None:
        body.update(job.result)
    if job.error is not None:
        body["error"] = job.error.to_dict()
    return body
