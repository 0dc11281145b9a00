"""Keeping the job store and the output files true to each other: recovery after a crash, and
retention. Runs at start-up (before the queue starts) and periodically. Never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import Interrupted, OutputMissing
from ..params import INPUT_ROLES, GenerationParams
from .outputs import OutputStore
from .store import JobStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a job that was running at two crashes in a row is failed, not run a third time


@dataclass
class RecoveryReport:
    requeued: list[dict[str, Any]] = field(default_factory=list)
    failed_running: list[str] = field(default_factory=list)
    finished_unrecorded: list[str] = field(default_factory=list)  # ran to the end; the record was lost
    adopted: list[str] = field(default_factory=list)  # files of jobs the database did not know
    missing_outputs: list[str] = field(default_factory=list)
    unmatched_files: list[str] = field(default_factory=list)  # left alone


def _image_ids(record: dict[str, Any]) -> list[str]:
    result = record.get("result") or {}
    return [image["id"] for image in result.get("images", [])] or [record["id"]]


def _timestamp(text: Any, default: float) -> float:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return default


def adopted_record(job_id: str, metas: list[dict[str, Any]], outputs: OutputStore, now: float) -> dict[str, Any]:
    """A succeeded job rebuilt from its images' metadata sidecars (the database lost it)."""
    first = metas[0]
    params = GenerationParams.from_dict({**first, "seed": first.get("seed", 0)}).to_dict()
    for role in INPUT_ROLES.values():  # the metadata names the inputs by their hashes
        params[role.field] = first.get(f"{role.field}_sha256")
    created = _timestamp(first.get("created_at"), now)
    finished_at = created + float((first.get("timings") or {}).get("total_s") or 0.0)
    return {
        "id": job_id, "status": "succeeded", "params": params, "created_at": created, "started_at": None,
        "finished_at": finished_at, "step": params.get("steps", 0), "total_steps": params.get("steps", 0),
        "result": outputs.result_of(metas), "error": None, "idempotency_key": None, "request_hash": None, "attempts": 1,
        "warnings": first.get("warnings"),
    }


async def recover(store: JobStore, outputs: OutputStore, restart_running: str) -> RecoveryReport:
    """After the previous run ended (cleanly or not), make the job store and the files agree,
    without ever deleting a finished image:

    - a queued or running job whose images are all on disk finished before the record said so:
      it is recorded as succeeded (never run twice);
    - other queued jobs come back in their original order; the job that was running is queued
      first again (``requeue``) or failed (``fail``), and failed after ``MAX_ATTEMPTS`` starts;
    - a succeeded job whose files are missing is marked failed (``output_missing``);
    - images whose job the database does not know (a database moved aside, lost or new) are
      adopted as succeeded jobs from their metadata; files without readable metadata are left
      alone and reported.
    """
    report = RecoveryReport()
    now = time.time()
    scan = await asyncio.get_running_loop().run_in_executor(None, outputs.scan)
    known: set[str] = set()
    for record in await store.with_status("running", "queued"):
        known.add(record["id"])
        crashed = record["status"] == "running"
        if scan.complete(record["id"]):
            await store.save({**adopted_record(record["id"], scan.outputs[record["id"]], outputs, now),
                              **{k: record[k] for k in ("params", "created_at", "started_at", "idempotency_key",
                                                         "request_hash", "attempts")}})
            report.finished_unrecorded.append(record["id"])
        elif crashed and (restart_running == "fail" or record["attempts"] >= MAX_ATTEMPTS):
            again = " again" if record["attempts"] >= MAX_ATTEMPTS else ""
            error = Interrupted(f"the server stopped{again} while this job ran (a crash or power loss); submit it again")
            await store.save({**record, "status": "failed", "finished_at": now, "error": error.to_record()})
            report.failed_running.append(record["id"])
        else:
            requeued = {**record, "status": "queued", "step": 0, "error": None}
            if crashed:
                await store.save(requeued)  # the job list and its ?status= filter say queued, as it is
            report.requeued.append(requeued)
    for record in await store.with_status("succeeded"):
        known.add(record["id"])
        expected = _image_ids(record)
        present = [meta for meta in scan.outputs.get(record["id"], []) if meta["id"] in expected]
        if len(present) == len(expected):
            continue
        report.missing_outputs.append(record["id"])
        if present:  # part of a batch was deleted: the rest keeps its links
            await store.save({**record, "result": outputs.result_of(present)})
            continue
        error = OutputMissing("this job's output files are missing from OUTPUT_DIR (deleted or lost in a crash)")
        await store.save({**record, "status": "failed", "result": None, "error": error.to_record()})
    known.update(record["id"] for record in await store.with_status("failed", "cancelled"))
    unknown = sorted((job_id for job_id in scan.outputs if job_id not in known),
                     key=lambda job_id: _timestamp(scan.outputs[job_id][0].get("created_at"), now))
    for job_id in unknown:
        await store.save(adopted_record(job_id, scan.outputs[job_id], outputs, now))
        report.adopted.append(job_id)
    report.unmatched_files = scan.unmatched
    _log_report(report)
    return report


def _log_report(report: RecoveryReport) -> None:
    if report.finished_unrecorded:
        log.warning("recorded as succeeded %d job(s) whose images were saved before the server stopped",
                    len(report.finished_unrecorded))
    if report.failed_running:
        log.warning("marked failed %d job(s) that were running when the server stopped", len(report.failed_running))
    if report.missing_outputs:
        log.warning("%d finished job(s) have missing files (failed if none is left): %s", len(report.missing_outputs),
                    ", ".join(report.missing_outputs[:5]))
    if report.adopted:
        log.warning("adopted %d job(s) from images in OUTPUT_DIR that the job database did not know", len(report.adopted))
    if report.unmatched_files:
        log.warning("left alone %d file(s) in OUTPUT_DIR that match no job: %s", len(report.unmatched_files),
                    "; ".join(report.unmatched_files[:5]))


async def enforce_retention(store: JobStore, outputs: OutputStore, days: float, count: int) -> list[str]:
    """Delete finished jobs older than ``days`` or beyond the newest ``count`` (0: no limit), with
    their files; queued and running jobs are never touched. Returns the deleted jobs' ids."""
    if not days and not count:
        return []
    expired = await store.expired(time.time() - days * 86400 if days else None, count or None)
    if not expired:
        return []
    ids = [record["id"] for record in expired]
    await store.delete(ids)  # rows first: a crash now leaves files with no row, adopted at the next start
    loop = asyncio.get_running_loop()
    for job_id in ids:
        await loop.run_in_executor(None, outputs.remove_outputs, job_id)
    log.info("retention: deleted %d finished job(s) and their files", len(ids))
    return ids
