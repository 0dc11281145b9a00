"""The names of a job's states and of the events that end a job: one home for both, used by the
queue, the job store, the HTTP schemas, the metrics, the tools and (through ``/api/v1/info``) the
web page."""

from __future__ import annotations

import enum


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
JOB_STATUSES = [status.value for status in JobStatus]

# The event that ends a job, for each terminal status (a websocket client stops on these).
END_EVENT = {JobStatus.SUCCEEDED: "completed", JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}
TERMINAL_EVENTS = frozenset(END_EVENT.values())
