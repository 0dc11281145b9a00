"""Keeping the job store and the output files true to each other: recovery after a crash, and
retention. Runs at start-up (before the queue starts) and periodically. Never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import Interrupted, OutputMissing
from .outputs import OutputStore
from .store import JobStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a job that was running at two crashes in a row is failed, not run a third time


@dataclass
class RecoveryReport:
    requeued: list[dict[str, Any]] = field(default_factory=list)
    failed_running: list[str] = field(default_factory=list)
    missing_outputs: list[str] = field(default_factory=list)
    orphan_files: int = 0


def _image_ids(record: dict[str, Any]) -> list[str]:
    result = record.get("result") or {}
    return [image["id"] for image in result.get("images", [])] or [record["id"]]


async def recover(store: JobStore, outputs: OutputStore, restart_running: str) -> RecoveryReport:
    """After the previous run ended (cleanly or not): decide what to queue again, and repair what
    a crash may have left. Queued jobs come back in their original order; the job that was running
    is queued first again (``requeue``) or marked failed (``fail``); a finished job whose files are
    missing is marked failed; files that belong to no finished job are removed."""
    report = RecoveryReport()
    now = time.time()
    for record in await store.with_status("running", "queued"):
        crashed = record["status"] == "running"
        if crashed and (restart_running == "fail" or record["attempts"] >= MAX_ATTEMPTS):
            again = " again" if record["attempts"] >= MAX_ATTEMPTS else ""
            error = Interrupted(f"the server stopped{again} while this job ran (a crash or power loss); submit it again")
            await store.save({**record, "status": "failed", "finished_at": now, "error": error.to_record()})
            report.failed_running.append(record["id"])
        else:
            report.requeued.append(record)
    succeeded = await store.with_status("succeeded")
    kept: set[str] = set()
    loop = asyncio.get_running_loop()
    for record in succeeded:
        expected = [outputs.image_path(i) for i in _image_ids(record)] + [outputs.metadata_path(i) for i in _image_ids(record)]
        present = await loop.run_in_executor(None, lambda paths=expected: all(p.is_file() for p in paths))
        if present:
            kept.add(record["id"])
            continue
        error = OutputMissing("this job's output files are missing from OUTPUT_DIR (deleted or lost in a crash)")
        await store.save({**record, "status": "failed", "error": error.to_record()})
        report.missing_outputs.append(record["id"])
        await loop.run_in_executor(None, outputs.remove_outputs, record["id"])
    for job_id in await loop.run_in_executor(None, outputs.all_output_ids):
        if job_id not in kept:  # a crash between writing the files and recording success, or a stray file
            report.orphan_files += await loop.run_in_executor(None, outputs.remove_outputs, job_id)
    if report.failed_running:
        log.warning("marked failed %d job(s) that were running when the server stopped", len(report.failed_running))
    if report.missing_outputs:
        log.warning("marked failed %d finished job(s) whose files are missing: %s", len(report.missing_outputs),
                    ", ".join(report.missing_outputs[:5]))
    if report.orphan_files:
        log.warning("removed %d output file(s) that belong to no finished job", report.orphan_files)
    return report


async def enforce_retention(store: JobStore, outputs: OutputStore, days: float, count: int) -> list[str]:
    """Delete finished jobs older than ``days`` or beyond the newest ``count`` (0: no limit), with
    their files; queued and running jobs are never touched. Returns the deleted jobs' ids."""
    if not days and not count:
        return []
    expired = await store.expired(time.time() - days * 86400 if days else None, count or None)
    if not expired:
        return []
    ids = [record["id"] for record in expired]
    await store.delete(ids)  # rows first: a crash now leaves files with no row, removed at the next start
    loop = asyncio.get_running_loop()
    for job_id in ids:
        await loop.run_in_executor(None, outputs.remove_outputs, job_id)
    log.info("retention: deleted %d finished job(s) and their files", len(ids))
    return ids
