"""The embedded store: one SQLite file in WAL mode.

Used by the lifecycle runner (writes, on transitions only) and by `siesta status`
(reads, from another process while siesta runs: WAL lets both proceed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from siesta.core.model import Endpoint, State, Transition
from siesta.ledger import Account, from_record, to_record

from .base import SessionRecord

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
    updated     REAL NOT NULL
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
CREATE TABLE IF NOT EXISTS ledger (
    session TEXT PRIMARY KEY,
    data    TEXT NOT NULL  -- siesta.ledger.to_record as JSON
);
"""


class SqliteStore:
    """`Store` on a SQLite file; creates the file and its folder when missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def register(self, session_id: str, template: str, labels: dict[str, str], now: float) -> None:
        self._db.execute(
            "INSERT INTO sessions (id, template, labels, state, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE"
            " SET template = excluded.template, labels = excluded.labels",
            (session_id, template, json.dumps(labels), State.ASLEEP.value, now, now),
        )

    def sessions(self) -> list[SessionRecord]:
        rows = self._db.execute(
            "SELECT id, template, labels, state, host, port, pid, pid_started, last_seen, created,"
            " updated"
            " FROM sessions ORDER BY id"
        )
        return [_record(row) for row in rows]

    def save(self, record: SessionRecord, event: Transition | None = None) -> None:
        endpoint = record.endpoint
        with self._transaction():
            self._db.execute(
                "UPDATE sessions SET state = ?, host = ?, port = ?, pid = ?, pid_started = ?,"
                " updated = ? WHERE id = ?",
                (
                    record.state.value,
                    endpoint.host if endpoint else None,
                    endpoint.port if endpoint else None,
                    record.pid,
                    record.pid_started,
                    record.updated,
                    record.id,
                ),
            )
            if event is not None:
                self._db.execute(
                    "INSERT INTO events (at, session, old, new, reason, wake_seconds)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        event.at,
                        event.session,
                        event.old.value,
                        event.new.value,
                        event.reason,
                        event.wake_seconds,
                    ),
                )

    def touch(self, last_seen: dict[str, float]) -> None:
        with self._transaction():
            self._db.executemany(
                "UPDATE sessions SET last_seen = ? WHERE id = ?",
                [(at, sid) for sid, at in last_seen.items()],
            )

    def delete(self, session_id: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]:
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

    def close(self) -> None:
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

    def save_account(self, account: Account) -> None:
        self._db.execute(
            "INSERT INTO ledger (session, data) VALUES (?, ?)"
            " ON CONFLICT (session) DO UPDATE SET data = excluded.data",
            (account.session, json.dumps(to_record(account))),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _record(row: tuple[object, ...]) -> SessionRecord:
    sid, template, labels, state, host, port, pid, pid_started, last_seen, created, updated = row
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
    )
