"""The webhook outbox: one row per event a job owes its webhook, in the job store's database.

A row is written in the same transaction as the change of state it reports (:mod:`.recording`),
so an event recorded is an event owed, whatever crash follows; it stays ``pending`` until a
receiver answers 2xx (``delivered``) or its retries run out (``failed``), and stays after that as
the job's delivery history until the job itself is deleted (``ON DELETE CASCADE``). Each
function here takes the store's connection and runs on the store's thread
(:meth:`.store.JobStore.run`). Never imports aiohttp.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

_FIELDS = ("id", "job_id", "event", "url", "payload", "created_at", "next_at")
_SHOWN = "id, event, state, attempts, created_at, next_at, last_at, last_status, last_error, delivered_at"


def insert(db: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """New pending deliveries (inside the caller's transaction)."""
    marks = ", ".join(f":{name}" for name in _FIELDS)
    db.executemany(
        f"INSERT INTO webhook_deliveries ({', '.join(_FIELDS)}) VALUES ({marks})",
        [{**row, "payload": json.dumps(row["payload"], ensure_ascii=False, separators=(",", ":"))} for row in rows],
    )


def add(db: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """New pending deliveries, in a transaction of their own."""
    db.execute("BEGIN IMMEDIATE")
    try:
        insert(db, rows)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def due(db: sqlite3.Connection, now: float, limit: int, busy: Sequence[str]) -> list[dict[str, Any]]:
    """Pending deliveries whose time has come, oldest first, but those in ``busy`` (being sent)."""
    skip = f"AND id NOT IN ({', '.join('?' for _ in busy)})" if busy else ""
    rows = db.execute(
        f"SELECT * FROM webhook_deliveries WHERE state = ? AND next_at <= ? {skip} ORDER BY next_at LIMIT ?",
        (PENDING, now, *busy, limit),
    ).fetchall()
    return [dict(row) for row in rows]


def next_due(db: sqlite3.Connection, busy: Sequence[str]) -> float | None:
    """When the next pending delivery (not one in ``busy``) is due; None when none is pending."""
    skip = f"AND id NOT IN ({', '.join('?' for _ in busy)})" if busy else ""
    row = db.execute(
        f"SELECT MIN(next_at) FROM webhook_deliveries WHERE state = ? {skip}", (PENDING, *busy)
    ).fetchone()
    return row[0]


def record_attempt(db: sqlite3.Connection, delivery_id: str, outcome: dict[str, Any]) -> None:
    """One attempt's outcome: ``state``, ``next_at``, ``last_at``, ``last_status``, ``last_error``,
    ``delivered_at``; the attempt is counted."""
    names = ("state", "next_at", "last_at", "last_status", "last_error", "delivered_at")
    sets = ", ".join(f"{name} = :{name}" for name in names)
    db.execute(
        f"UPDATE webhook_deliveries SET {sets}, attempts = attempts + 1 WHERE id = :id",
        {**{name: outcome.get(name) for name in names}, "id": delivery_id},
    )


def of_job(db: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    """A job's deliveries as clients see them, oldest first (no payload)."""
    rows = db.execute(
        f"SELECT {_SHOWN} FROM webhook_deliveries WHERE job_id = ? ORDER BY created_at, rowid", (job_id,)
    ).fetchall()
    return [dict(row) for row in rows]


def ended_without_delivery(db: sqlite3.Connection, end_events: dict[str, str]) -> list[str]:
    """Ended jobs with a webhook and no delivery row for their end event (recovery ended them, or
    they ended by a path that wrote no row): ``end_events`` maps a terminal status to its event."""
    cases = " ".join("WHEN ? THEN ?" for _ in end_events)
    args = [value for pair in end_events.items() for value in pair]
    rows = db.execute(
        f"SELECT id FROM jobs WHERE webhook IS NOT NULL AND status IN ({', '.join('?' for _ in end_events)}) "
        f"AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = jobs.id "
        f"AND d.event = CASE jobs.status {cases} END)",
        (*end_events, *args),
    ).fetchall()
    return [row["id"] for row in rows]
