"""The job store: every accepted job in SQLite, so history survives restarts and nothing is lost.

One database file (``OUTPUT_DIR/jobs.sqlite3`` by default) in WAL mode, used only from its own
single thread: the event loop awaits it, never blocks on it. The schema is versioned with
``PRAGMA user_version`` and migrated forward on open. A lock file keeps a second server off the
same database. Never imports torch or aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from ..config import ConfigError
from . import outbox
from .locking import hold_lock
from .states import TERMINAL_STATUSES

log = logging.getLogger(__name__)

COLUMNS = (
    "id", "status", "params", "created_at", "started_at", "finished_at", "step", "total_steps",
    "result", "error", "idempotency_key", "request_hash", "attempts", "warnings", "owner",
    "webhook",
)
_JSON = ("params", "result", "error", "warnings", "webhook")

# Each entry moves the schema from version i to i + 1. Append; never edit a released one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        params TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        idempotency_key TEXT UNIQUE,
        request_hash TEXT,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_status ON jobs (status, seq);
    CREATE INDEX jobs_by_finish ON jobs (finished_at);
    """,
    # 2: what an A1111 request asked for and was not applied (its images' metadata says it)
    """
    ALTER TABLE jobs ADD COLUMN warnings TEXT;
    """,
    # 3: who submitted the job (a key's name; NULL: before keys, or the one API_KEY / no key)
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    CREATE INDEX jobs_by_owner ON jobs (owner, seq);
    """,
    # 4: where a job's events are delivered (its webhook), and the outbox of those deliveries (jobs/outbox.py)
    """
    ALTER TABLE jobs ADD COLUMN webhook TEXT;
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        event TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_at REAL,
        last_status INTEGER,
        last_error TEXT,
        delivered_at REAL
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
    CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id, created_at);
    """,
    # 5: what each key used, per UTC day (jobs/usage.py); owner '' is the anonymous caller
    """
    CREATE TABLE usage (
        owner TEXT NOT NULL,
        day TEXT NOT NULL,
        jobs INTEGER NOT NULL DEFAULT 0,
        images INTEGER NOT NULL DEFAULT 0,
        gpu_seconds REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (owner, day)
    );
    CREATE INDEX usage_by_day ON usage (day);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(ConfigError):
    """The job store cannot be used; the message is one line saying why and what to do."""


class JobStore:
    """Rows of jobs, read and written on one dedicated thread."""

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-jobstore")
        self._db: sqlite3.Connection | None = None
        self._lock_file: Any = None

    # -- life cycle (called once, from the loop) ---------------------------------------

    async def open(self) -> None:
        """Lock, open, check and migrate; raise :class:`StoreError` with a clear reason."""
        await self._call(self._open)

    async def close(self) -> None:
        await self._call(self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        where = f"the job database {self.path}"
        try:
            db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a job acknowledged survives a power cut too
            db.execute("PRAGMA foreign_keys=ON")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._db = db
            self._migrate()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(f"{where} is locked by another program ({exc}): stop it and start again") from None
            raise StoreError(f"{where} cannot be opened ({exc}): check the file and its folder's permissions") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{where} is damaged ({exc}): move it aside (history starts empty; images stay on disk) "
                "or restore a backup, then start again"
            ) from None

    def _lock(self) -> None:
        self._lock_file = hold_lock(
            self.path.with_name(self.path.name + ".lock"),
            f"another sdxl-server is already using the job database {self.path}: stop it, or give this one its own JOBS_DB",
        )

    def _migrate(self) -> None:
        db = self._db
        assert db is not None
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the job database {self.path} is from a newer release (schema {version}, this one knows "
                f"{SCHEMA_VERSION}): upgrade sdxl-server"
            )
        for target in range(version, SCHEMA_VERSION):
            log.info("migrating the job database to schema version %d", target + 1)
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, MIGRATIONS[target].split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target + 1}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None

    # -- access ----------------------------------------------------------------------

    async def _call(self, fn, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @staticmethod
    def _encode(record: dict[str, Any]) -> dict[str, Any]:
        row = {name: record.get(name) for name in COLUMNS}
        for name in _JSON:
            if row[name] is not None:
                row[name] = json.dumps(row[name], ensure_ascii=False)
        row["attempts"] = row["attempts"] or 0
        return row

    @staticmethod
    def _decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        record = dict(row)
        for name in _JSON:
            if record[name] is not None:
                record[name] = json.loads(record[name])
        return record

    def _save(self, record: dict[str, Any], deliveries: Sequence[dict[str, Any]] = ()) -> None:
        row = self._encode(record)
        names = ", ".join(COLUMNS)
        marks = ", ".join(f":{name}" for name in COLUMNS)
        updates = ", ".join(f"{name} = excluded.{name}" for name in COLUMNS if name != "id")
        db = self._db
        assert db is not None
        if not deliveries:
            db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET {updates}", row)
            return
        db.execute("BEGIN IMMEDIATE")  # the change and the webhooks it owes: both, or neither
        try:
            db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET {updates}", row)
            outbox.insert(db, deliveries)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def save(self, record: dict[str, Any]) -> None:
        """Insert or update one job (its ``id`` names it)."""
        await self._call(self._save, record)

    def save_soon(self, record: dict[str, Any], deliveries: Sequence[dict[str, Any]] = ()) -> asyncio.Future:
        """Queue a save behind earlier ones at once (writes keep their order); await it or not.
        ``deliveries``: webhook deliveries (:mod:`.outbox` rows) written in the same transaction."""
        return asyncio.get_running_loop().run_in_executor(self._executor, self._save, record, deliveries)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(connection, *args)`` on the store's thread, behind the writes queued so far (the
        outbox's queries, :mod:`.outbox`)."""
        assert self._db is not None
        return await self._call(lambda: fn(self._db, *args))

    async def flush(self) -> None:
        """Until every write queued so far is done."""
        await self._call(lambda: None)

    def _get(self, job_id: str) -> dict[str, Any] | None:
        assert self._db is not None
        return self._decode(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self._call(self._get, job_id)

    def _by_key(self, key: str) -> dict[str, Any] | None:
        assert self._db is not None
        return self._decode(self._db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone())

    async def by_idempotency_key(self, key: str) -> dict[str, Any] | None:
        return await self._call(self._by_key, key)

    def _page(self, limit: int, status: str | None, before: int | None, owner: str | None) -> list[dict[str, Any]]:
        clauses, args = [], []
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if status:
            clauses.append("status = ?")
            args.append(status)
        if before is not None:
            clauses.append("seq < ?")
            args.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        assert self._db is not None
        rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._decode(row) for row in rows]  # type: ignore[misc]

    async def page(
        self, limit: int, status: str | None = None, before: int | None = None, owner: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` is the ``seq`` of the last row of the previous page; with
        ``owner``, that owner's jobs only."""
        return await self._call(self._page, limit, status, before, owner)

    def _with_status(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        assert self._db is not None
        marks = ", ".join("?" for _ in statuses)
        rows = self._db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses).fetchall()
        return [self._decode(row) for row in rows]  # type: ignore[misc]

    async def with_status(self, *statuses: str) -> list[dict[str, Any]]:
        """Oldest first."""
        return await self._call(self._with_status, statuses)

    def _expired(self, older_than: float | None, keep: int | None) -> list[dict[str, Any]]:
        assert self._db is not None
        terminal = f"status IN ({', '.join(repr(s.value) for s in TERMINAL_STATUSES)})"
        found: dict[str, dict[str, Any]] = {}
        if older_than is not None:
            for row in self._db.execute(f"SELECT * FROM jobs WHERE {terminal} AND finished_at < ?", (older_than,)):
                found[row["id"]] = self._decode(row)  # type: ignore[assignment]
        if keep is not None:
            query = f"SELECT * FROM jobs WHERE {terminal} ORDER BY seq DESC LIMIT -1 OFFSET ?"
            for row in self._db.execute(query, (keep,)):
                found[row["id"]] = self._decode(row)  # type: ignore[assignment]
        return list(found.values())

    async def expired(self, older_than: float | None, keep: int | None) -> list[dict[str, Any]]:
        """Finished jobs older than ``older_than`` (a Unix time) or beyond the newest ``keep``."""
        return await self._call(self._expired, older_than, keep)

    def _delete(self, ids: list[str]) -> None:
        assert self._db is not None
        with contextlib.closing(self._db.cursor()) as cursor:
            cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in ids])
            cursor.execute("COMMIT")

    async def delete(self, ids: list[str]) -> None:
        await self._call(self._delete, ids)

    def _count(self) -> int:
        assert self._db is not None
        return self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    async def count(self) -> int:
        return await self._call(self._count)

    # -- usage per key per day (jobs/usage.py) ------------------------------------------

    def _add_usage(self, owner: str, day: str, jobs: int, images: int, gpu_seconds: float) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT INTO usage (owner, day, jobs, images, gpu_seconds) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(owner, day) DO UPDATE SET jobs = jobs + excluded.jobs, images = images + excluded.images, "
            "gpu_seconds = gpu_seconds + excluded.gpu_seconds",
            (owner, day, jobs, images, gpu_seconds),
        )

    def add_usage_soon(self, owner: str, day: str, *, jobs: int = 0, images: int = 0, gpu_seconds: float = 0.0) -> asyncio.Future:
        """Add to ``owner``'s usage of ``day`` (a UTC date), behind the writes queued before it."""
        return asyncio.get_running_loop().run_in_executor(
            self._executor, self._add_usage, owner, day, jobs, images, gpu_seconds)

    def _usage(self, since: str, owner: str | None) -> list[dict[str, Any]]:
        assert self._db is not None
        query = "SELECT owner, day, jobs, images, gpu_seconds FROM usage WHERE day >= ?"
        args: tuple[Any, ...] = (since,)
        if owner is not None:
            query, args = query + " AND owner = ?", (since, owner)
        return [dict(row) for row in self._db.execute(query + " ORDER BY day, owner", args)]

    async def usage(self, since: str, owner: str | None = None) -> list[dict[str, Any]]:
        """Usage rows from the UTC date ``since`` on (every owner's, or ``owner``'s), oldest first."""
        return await self._call(self._usage, since, owner)
