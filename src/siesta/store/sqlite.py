"""The embedded store: one SQLite file in WAL mode.

`SqliteStore` is the blocking store, used as it is by `siesta status` and the demo
(reads, from another process while siesta runs: WAL lets both proceed) and by tests.
siesta itself uses `ThreadedSqlite`, which runs the same code on two threads of its
own, a writer and a reader, each with its own connection: the event loop never waits
for the disk, and a read is not queued behind a write stuck on a lock.

A file deleted or replaced under a running siesta is noticed (`check`: its device and
inode changed) and recreated; the caller writes what it knows again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from siesta.core.model import Endpoint, State, Transition
from siesta.ledger import Account, from_record, to_record

from .base import PRUNE_BATCH, Batch, Checked, SessionRecord

T = TypeVar("T")

BUSY_TIMEOUT = 5.0
"""Seconds a write waits for another connection's lock (a backup, the sqlite3 shell)
before it fails and is retried by the write-behind queue: long enough for a short
transaction elsewhere, short enough that an outage is reported soon."""

READ_BUSY_TIMEOUT = 2.0
"""Seconds a read waits for a lock (rare in WAL mode: only while a checkpoint resets)."""

log = logging.getLogger("siesta.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT PRIMARY KEY,
    template    TEXT NOT NULL,
    labels      TEXT NOT NULL DEFAULT '{}',
    state       TEXT NOT NULL,
    host        TEXT,
    port        INTEGER,
    pid         INTEGER,
    pid_started REAL,
    last_seen   REAL,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    fence       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           REAL NOT NULL,
    session      TEXT NOT NULL,
    old          TEXT NOT NULL,
    new          TEXT NOT NULL,
    reason       TEXT NOT NULL,
    wake_seconds REAL
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session, at);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at);
CREATE TABLE IF NOT EXISTS tokens (
    session TEXT PRIMARY KEY,
    token   TEXT NOT NULL  -- the session's access token (gateway.auth mode token)
);
CREATE TABLE IF NOT EXISTS ledger (
    session TEXT PRIMARY KEY,
    data    TEXT NOT NULL  -- siesta.ledger.to_record as JSON
);
"""

_COLUMNS = (
    "id, template, labels, state, host, port, pid, pid_started, last_seen, created, updated, fence"
)


class SqliteStore:
    """The store on a SQLite file, blocking; creates the file and its folder when missing."""

    kind = "sqlite"

    def __init__(self, path: str | Path, *, timeout: float = BUSY_TIMEOUT):
        self.path = Path(path)
        self._timeout = timeout
        self._db, self._identity = self._connect()

    def _connect(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            _migrate(db)
            stat = os.stat(self.path)
        except BaseException:
            db.close()
            raise
        return db, (stat.st_dev, stat.st_ino)

    # -- writes ---------------------------------------------------------------

    def register(self, session_id: str, template: str, labels: dict[str, str], now: float) -> None:
        """Add a session (ASLEEP) unless it exists; its template and labels are refreshed."""
        self._register(session_id, template, labels, now)

    def _register(self, sid: str, template: str, labels: dict[str, str], now: float) -> None:
        self._db.execute(
            "INSERT INTO sessions (id, template, labels, state, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE"
            " SET template = excluded.template, labels = excluded.labels",
            (sid, template, json.dumps(labels), State.ASLEEP.value, now, now),
        )

    def save(self, record: SessionRecord, event: Transition | None = None) -> None:
        """Write a session's state (and the event that changed it) atomically."""
        with self._transaction():
            self._save(record)
            if event is not None:
                self._insert_events([event])

    def _save(self, record: SessionRecord) -> None:
        endpoint = record.endpoint
        self._db.execute(
            "UPDATE sessions SET state = ?, host = ?, port = ?, pid = ?, pid_started = ?,"
            " updated = ?, fence = max(fence, ?) WHERE id = ? AND fence <= ?",
            (
                record.state.value,
                endpoint.host if endpoint else None,
                endpoint.port if endpoint else None,
                record.pid,
                record.pid_started,
                record.updated,
                record.fence,
                record.id,
                record.fence,
            ),
        )

    def _insert_events(self, events: list[Transition]) -> None:
        self._db.executemany(
            "INSERT INTO events (at, session, old, new, reason, wake_seconds)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(e.at, e.session, e.old.value, e.new.value, e.reason, e.wake_seconds) for e in events],
        )

    def touch(self, last_seen: dict[str, float]) -> None:
        """Record when sessions last saw traffic (wall clock), in one batch."""
        with self._transaction():
            self._touch(last_seen)

    def _touch(self, last_seen: dict[str, float]) -> None:
        self._db.executemany(
            "UPDATE sessions SET last_seen = max(coalesce(last_seen, 0), ?) WHERE id = ?",
            [(at, sid) for sid, at in last_seen.items()],
        )

    def delete(self, session_id: str) -> None:
        """Forget a session and its access token (its events stay)."""
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        self._db.execute("DELETE FROM tokens WHERE session = ?", (session_id,))

    def write(self, batch: Batch) -> None:
        """Apply `batch` in one transaction (see `Batch` for the order)."""
        with self._transaction():
            for sid in batch.deleted:
                self.delete(sid)
            for sid, reg in batch.registered.items():
                self._register(sid, reg.template, reg.labels, reg.created)
            for record in batch.records.values():
                self._save(record)
            self._insert_events(batch.events)
            self._touch(batch.last_seen)
            for account in batch.accounts.values():
                self.save_account(account)
            self._db.executemany(
                "INSERT INTO tokens (session, token) VALUES (?, ?)"
                " ON CONFLICT (session) DO UPDATE SET token = excluded.token",
                list(batch.tokens.items()),
            )

    def prune(self, before: float) -> int:
        """Delete up to `PRUNE_BATCH` events older than `before`; return how many."""
        cursor = self._db.execute(
            "DELETE FROM events WHERE seq IN"
            " (SELECT seq FROM events WHERE at < ? ORDER BY at LIMIT ?)",
            (before, PRUNE_BATCH),
        )
        return cursor.rowcount

    # -- reads ----------------------------------------------------------------

    def sessions(self) -> list[SessionRecord]:
        """Every stored session."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM sessions ORDER BY id")
        return [_record(row) for row in rows]

    def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]:
        """Events, oldest first, optionally of one session and after `since` (wall clock)."""
        rows = self._db.execute(
            "SELECT session, at, old, new, reason, wake_seconds FROM events"
            " WHERE (?1 IS NULL OR session = ?1) AND (?2 IS NULL OR at > ?2)"
            " ORDER BY seq LIMIT ?3",
            (session, since, limit),
        )
        return [
            Transition(sid, at, State(old), State(new), reason, wake)
            for sid, at, old, new, reason, wake in rows
        ]

    # -- the file itself ------------------------------------------------------

    def changed(self) -> str | None:
        """Why the file is no longer the one opened (deleted, replaced), or None."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return f"the store file {self.path} was deleted"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return f"the store file {self.path} was replaced by another file"
        return None

    def reopen(self) -> None:
        """Close, remove what the deleted file left behind (its WAL), open the file anew."""
        self._db.close()
        if not self.path.exists():
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
        self._db, self._identity = self._connect()

    def close(self) -> None:
        """Release the store."""
        self._db.close()

    def accounts(self) -> list[Account]:
        rows = self._db.execute("SELECT session, data FROM ledger ORDER BY session")
        found = []
        for session, data in rows:
            try:
                found.append(from_record(json.loads(data)))
            except ValueError as exc:  # one damaged row must not hide the others
                log.warning("ledger account of %s is unreadable, skipped: %s", session, exc)
        return found

    def tokens(self) -> dict[str, str]:
        """Every stored session access token, by session id."""
        return dict(self._db.execute("SELECT session, token FROM tokens"))

    def save_account(self, account: Account) -> None:
        self._db.execute(
            "INSERT INTO ledger (session, data) VALUES (?, ?)"
            " ON CONFLICT (session) DO UPDATE SET data = excluded.data",
            (account.session, json.dumps(to_record(account))),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store made by an older siesta up to the current schema."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
    if "fence" not in columns:
        db.execute("ALTER TABLE sessions ADD COLUMN fence INTEGER NOT NULL DEFAULT 0")


def _record(row: tuple[object, ...]) -> SessionRecord:
    sid, template, labels, state, host, port, pid, pid_started, last_seen, created, updated = row[
        :11
    ]
    endpoint = Endpoint(str(host), int(str(port))) if host and port else None
    return SessionRecord(
        id=str(sid),
        template=str(template),
        labels=json.loads(str(labels)),
        state=State(str(state)),
        endpoint=endpoint,
        pid=int(str(pid)) if pid is not None else None,
        pid_started=float(str(pid_started)) if pid_started is not None else None,
        last_seen=float(str(last_seen)) if last_seen is not None else None,
        created=float(str(created)),
        updated=float(str(updated)),
        fence=int(str(row[11])),
    )


class _Thread:
    """One thread with its own `SqliteStore`, opened there on first use."""

    def __init__(self, path: Path, timeout: float, name: str):
        self._path = path
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.store: SqliteStore | None = None

    async def run(self, call: Callable[[SqliteStore], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, call)

    def _call(self, call: Callable[[SqliteStore], T]) -> T:
        if self.store is None:
            self.store = SqliteStore(self._path, timeout=self._timeout)
        return call(self.store)

    def close_store(self) -> None:
        """Close this thread's connection (called on the thread)."""
        if self.store is not None:
            self.store.close()
            self.store = None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.run(lambda _: self.close_store())
        self._pool.shutdown(wait=False)


class ThreadedSqlite:
    """The async `Store` on a SQLite file: a writer thread and a reader thread."""

    kind = "sqlite"

    def __init__(self, path: str | Path, *, timeout: float = BUSY_TIMEOUT):
        self.path = Path(path)
        self._writer = _Thread(self.path, timeout, "siesta-store-writer")
        self._reader = _Thread(self.path, READ_BUSY_TIMEOUT, "siesta-store-reader")

    async def open(self) -> None:
        await self._writer.run(lambda db: None)

    async def sessions(self) -> list[SessionRecord]:
        return await self._reader.run(SqliteStore.sessions)

    async def write(self, batch: Batch) -> None:
        await self._writer.run(lambda db: db.write(batch))

    async def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]:
        return await self._reader.run(lambda db: db.events(session, since, limit))

    async def accounts(self) -> list[Account]:
        return await self._reader.run(SqliteStore.accounts)

    async def tokens(self) -> dict[str, str]:
        return await self._reader.run(SqliteStore.tokens)

    async def prune(self, before: float) -> int:
        return await self._writer.run(lambda db: db.prune(before))

    async def check(self) -> Checked:
        why = await self._writer.run(SqliteStore.changed)
        if why is None:
            return Checked()
        # the reader lets go of the old file first: it reopens the new one on its next read
        await self._reader.run(lambda _: self._reader.close_store())
        await self._writer.run(SqliteStore.reopen)
        return Checked(lost=True, detail=f"{why}; recreated it")

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()
