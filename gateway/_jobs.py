"""`JobStore`: background jobs in an embedded SQLite database, off the event loop.

Every statement runs on one dedicated thread (a single-worker executor that owns the
connection), so the gateway's IOLoop never waits on disk, and statements run in the
order they were submitted: a cancel sent after a start is applied after it.

State rules, enforced in SQL so that racing updates cannot undo each other::

    queued --start--> running --finish--> done | failed
       |                 |  \\--requeue--> queued      (no worker took it)
       +----cancel-------+--> cancelled

A finished job (done, failed, cancelled) never changes again and is deleted once it
is older than the TTL. A file database uses WAL with ``synchronous=NORMAL``: a
committed job survives a crash of the gateway (not necessarily of the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from ._config import MEMORY

__all__ = [
    "CANCELLED",
    "DONE",
    "FAILED",
    "FINISHED",
    "QUEUED",
    "RUNNING",
    "JobRecord",
    "JobStore",
    "StoreError",
]

log = logging.getLogger("zeromesh.gateway")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)

_SCHEMA_VERSION = 2  # 2: the owner column
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id       TEXT PRIMARY KEY,
    target   TEXT NOT NULL,
    payload  BLOB,              -- msgpack [args, kwargs]; dropped once finished
    status   TEXT NOT NULL,
    created  REAL NOT NULL,     -- unix seconds
    started  REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress TEXT,              -- JSON {"done", "total", "note"}
    result   BLOB,              -- see gateway._render.pack_stored
    error    TEXT,              -- JSON {"type", "message", "code"[, "traceback"]}
    owner    TEXT               -- name of the token that created it; NULL: no --token-file
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished) WHERE finished IS NOT NULL;
"""
_COLUMNS = (
    "id, target, status, created, started, finished, attempts, progress, result, error, owner"
)

T = TypeVar("T")


class StoreError(Exception):
    """The jobs database cannot be opened or used (a startup error, with what to do)."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as stored. ``result`` is still encoded (`gateway._render.unpack_stored`)."""

    id: str
    target: str
    status: str
    created: float
    started: float | None
    finished: float | None
    attempts: int
    progress: dict[str, Any] | None
    result: bytes | None
    error: dict[str, Any] | None
    owner: str | None = None
    """The name of the token that created the job (None without ``--token-file``)."""

    @classmethod
    def _from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        progress, error = row[7], row[9]
        return cls(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            json.loads(progress) if progress else None,
            row[8],
            json.loads(error) if error else None,
            row[10],
        )


def new_job_id() -> str:
    """An unguessable job id: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a table of an older schema up to date (``CREATE ... IF NOT EXISTS`` left
    it as it was). Schema 1 had no owner: its jobs keep NULL, visible without tokens."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if "owner" not in columns:
        db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")


class JobStore:
    """The jobs table, driven from the event loop; every method is a coroutine.

    ``path`` is a file (created if missing; its directory must exist) or ``":memory:"``.
    A file is locked (``PATH.lock``) for as long as the store is open, so two gateways
    never run the same jobs twice from one database.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="zeromesh-gateway-db")
        self._db: sqlite3.Connection | None = None
        self._lock: IO[str] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the database and take its lock.

        Raises:
            StoreError: the file is not a database, cannot be created, or another
                gateway holds it.
        """
        await self._run(self._open)

    async def close(self) -> None:
        """Close the database and release the lock. Idempotent."""
        with contextlib.suppress(RuntimeError):  # executor already shut down
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        if self.path != MEMORY:
            self._take_lock()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._release_lock()
            raise StoreError(f"cannot open jobs database {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            if self.path != MEMORY:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"jobs database {self.path} has schema version {version}, newer than "
                    f"this gateway's ({_SCHEMA_VERSION}): upgrade zeromesh or use another file"
                )
            db.executescript(_SCHEMA)
            _migrate(db)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            db.close()
            self._release_lock()
            raise StoreError(
                f"{self.path} is not a usable jobs database ({exc}); point --jobs-db at "
                "another file, or move this one away"
            ) from exc
        except StoreError:
            db.close()
            self._release_lock()
            raise
        self._db = db

    def _take_lock(self) -> None:
        path = Path(self.path)
        if not path.parent.is_dir():
            raise StoreError(
                f"cannot create jobs database {path}: directory {path.parent} does not exist"
            )
        lock_path = f"{path}.lock"
        try:
            lock = open(lock_path, "a+")  # noqa: SIM115 (held until close)
        except OSError as exc:
            raise StoreError(f"cannot create {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise StoreError(
                f"jobs database {path} is in use by {holder}: each gateway needs its own "
                "--jobs-db (two would run the same jobs)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"gateway pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._release_lock()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the jobs database is closed")
        return self._db

    # --- jobs ------------------------------------------------------------------------------

    async def create(self, target: str, payload: bytes, owner: str | None = None) -> JobRecord:
        """Store a new queued job for ``target`` with encoded ``payload``, belonging to
        ``owner`` (a token name, or None); return it."""
        return await self._run(self._create, target, payload, owner)

    def _create(self, target: str, payload: bytes, owner: str | None) -> JobRecord:
        job_id = new_job_id()
        now = self._clock()
        self._conn().execute(
            "INSERT INTO jobs (id, target, payload, status, created, owner) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, target, payload, QUEUED, now, owner),
        )
        return JobRecord(job_id, target, QUEUED, now, None, None, 0, None, None, None, owner)

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None when there is none by that id (or it expired)."""
        return await self._run(self._get, job_id)

    def _get(self, job_id: str) -> JobRecord | None:
        row = (
            self._conn().execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return None if row is None else JobRecord._from_row(row)

    async def start(self, job_id: str) -> tuple[str, bytes] | None:
        """Mark a queued job running (one more attempt); return ``(target, payload)``.

        None when the job is no longer queued (cancelled meanwhile, or gone).
        """
        return await self._run(self._start, job_id)

    def _start(self, job_id: str) -> tuple[str, bytes] | None:
        db = self._conn()
        cur = db.execute(
            "UPDATE jobs SET status = ?, started = ?, attempts = attempts + 1, progress = NULL "
            "WHERE id = ? AND status = ?",
            (RUNNING, self._clock(), job_id, QUEUED),
        )
        if cur.rowcount != 1:
            return None
        row = db.execute("SELECT target, payload FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0], row[1]

    async def requeue(self, job_id: str) -> bool:
        """Put a running job back in the queue (nothing ran). False if it is not running."""
        return await self._run(self._requeue, job_id)

    def _requeue(self, job_id: str) -> bool:
        cur = self._conn().execute(
            "UPDATE jobs SET status = ?, started = NULL WHERE id = ? AND status = ?",
            (QUEUED, job_id, RUNNING),
        )
        return cur.rowcount == 1

    async def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: bytes | None = None,
        error: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Record the end of a running job: ``done`` with ``result`` or ``failed`` with
        ``error``. False (nothing written) when it was cancelled meanwhile."""
        if status not in (DONE, FAILED):
            raise ValueError(f"finish() takes done or failed, not {status!r}")
        return await self._run(self._finish, job_id, status, result, error, progress)

    def _finish(
        self,
        job_id: str,
        status: str,
        result: bytes | None,
        error: dict[str, Any] | None,
        progress: dict[str, Any] | None,
    ) -> bool:
        cur = self._conn().execute(
            "UPDATE jobs SET status = ?, finished = ?, result = ?, error = ?, "
            "progress = COALESCE(?, progress), payload = NULL WHERE id = ? AND status = ?",
            (
                status,
                self._clock(),
                result,
                None if error is None else json.dumps(error),
                None if progress is None else json.dumps(progress),
                job_id,
                RUNNING,
            ),
        )
        return cur.rowcount == 1

    async def cancel(
        self, job_id: str, progress: dict[str, Any] | None = None
    ) -> tuple[JobRecord | None, bool]:
        """Cancel a queued or running job. Returns ``(record after, changed)``; the record
        is None for an unknown id, ``changed`` False when it had finished already."""
        return await self._run(self._cancel, job_id, progress)

    def _cancel(
        self, job_id: str, progress: dict[str, Any] | None
    ) -> tuple[JobRecord | None, bool]:
        cur = self._conn().execute(
            "UPDATE jobs SET status = ?, finished = ?, payload = NULL, "
            "progress = COALESCE(?, progress) WHERE id = ? AND status IN (?, ?)",
            (
                CANCELLED,
                self._clock(),
                None if progress is None else json.dumps(progress),
                job_id,
                QUEUED,
                RUNNING,
            ),
        )
        return self._get(job_id), cur.rowcount == 1

    async def recover(self) -> list[tuple[str, str]]:
        """On start: every unfinished job back to queued, oldest first; return their ids
        and targets.

        A job that was running when the last gateway stopped may have run (or may still
        be running) on a worker: it runs again (at-least-once).
        """
        return await self._run(self._recover)

    def _recover(self) -> list[tuple[str, str]]:
        db = self._conn()
        db.execute("UPDATE jobs SET status = ? WHERE status = ?", (QUEUED, RUNNING))
        rows = db.execute(
            "SELECT id, target FROM jobs WHERE status = ? ORDER BY created, rowid", (QUEUED,)
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    async def purge(self, older_than: float) -> int:
        """Delete jobs finished before unix time ``older_than``; return how many."""
        return await self._run(self._purge, older_than)

    def _purge(self, older_than: float) -> int:
        cur = self._conn().execute(
            "DELETE FROM jobs WHERE finished IS NOT NULL AND finished < ?", (older_than,)
        )
        return cur.rowcount

    async def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero included)."""
        return await self._run(self._counts)

    def _counts(self) -> dict[str, int]:
        counts = dict.fromkeys((QUEUED, RUNNING, DONE, FAILED, CANCELLED), 0)
        for status, n in self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            counts[status] = n
        return counts
