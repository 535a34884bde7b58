"""The store interface: sessions, and the event log of their transitions.

The lifecycle runner is the only writer, through the write-behind `Recorder`
(`siesta.store.writer`): it hands over what changed and never waits for the store.
The admin API and `siesta status` read. Writes happen on transitions and in
activity batches, never per request.

A `Store` is asynchronous and never blocks the event loop: the SQLite one runs its
I/O on threads of its own (`siesta.store.sqlite.ThreadedSqlite`), the Redis one
talks to Redis through redis-py's asyncio client. To add a method: add it here,
to `SqliteStore` (blocking) with its wrapper in `ThreadedSqlite`, and to `RedisStore`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from siesta.core.model import Endpoint, Session, State, Transition
from siesta.ledger import Account

PRUNE_BATCH = 5000
"""Events deleted at most by one `Store.prune` call: the store is busy briefly each time,
and writes go in between."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as stored: enough to rebuild it and re-adopt its backend.

    `fence` is the fencing token of the wake that started the backend described
    here: a store keeps the record with the highest one, so a late write of a
    replica that lost its wake cannot overwrite a newer truth.
    """

    id: str
    template: str
    labels: dict[str, str] = field(default_factory=dict)
    state: State = State.ASLEEP
    endpoint: Endpoint | None = None
    pid: int | None = None
    pid_started: float | None = None
    last_seen: float | None = None  # wall clock of the last traffic, flushed in batches
    created: float = 0.0
    updated: float = 0.0
    fence: int = 0

    @classmethod
    def of(cls, session: Session, updated: float) -> SessionRecord:
        """What the store keeps of `session`, as of `updated` (wall clock)."""
        return cls(
            id=session.id,
            template=session.template,
            labels=session.labels,
            state=session.state,
            endpoint=session.endpoint,
            pid=session.pid,
            pid_started=session.pid_started,
            created=session.created,
            updated=updated,
            fence=session.fence,
        )


@dataclass(frozen=True, slots=True)
class Registration:
    """A session to add (ASLEEP) unless it exists; its template and labels are refreshed."""

    template: str
    labels: dict[str, str]
    created: float


@dataclass(slots=True)
class Batch:
    """Writes gathered while the store was busy, applied together.

    Per session, in this order: `deleted` (forget it), `registered` (add it unless
    it exists), `records` (its latest state). Then `events` in the order they
    happened, then `last_seen` (wall-clock times of the last traffic, kept if newer),
    then the ledger's `accounts` (a deleted session's account stays).
    """

    deleted: set[str] = field(default_factory=set)
    registered: dict[str, Registration] = field(default_factory=dict)
    records: dict[str, SessionRecord] = field(default_factory=dict)
    events: list[Transition] = field(default_factory=list)
    last_seen: dict[str, float] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)  # ledger accounts, latest
    tokens: dict[str, str] = field(default_factory=dict)  # session -> access token, latest

    def __len__(self) -> int:
        return (
            len(self.deleted)
            + len(self.registered)
            + len(self.records)
            + len(self.events)
            + len(self.last_seen)
            + len(self.accounts)
            + len(self.tokens)
        )

    def delete(self, session_id: str) -> None:
        """Forget `session_id`: what was pending for it is dropped."""
        self.registered.pop(session_id, None)
        self.records.pop(session_id, None)
        self.last_seen.pop(session_id, None)
        self.tokens.pop(session_id, None)
        self.deleted.add(session_id)

    def then(self, later: Batch) -> Batch:
        """This batch followed by `later` (the newer writes win); `later` is consumed."""
        for sid in later.deleted:
            self.delete(sid)
        self.registered.update(later.registered)
        self.records.update(later.records)
        self.events.extend(later.events)
        for sid, at in later.last_seen.items():
            self.last_seen[sid] = max(at, self.last_seen.get(sid, at))
        self.accounts.update(later.accounts)
        self.tokens.update(later.tokens)
        return self


@dataclass(frozen=True, slots=True)
class Checked:
    """What `Store.check` found: `lost` says the stored data is gone (a store file
    deleted or replaced, a Redis restarted empty) and was recreated empty: whoever
    holds the truth must write it again. `detail` says what happened, for the log."""

    lost: bool = False
    detail: str = ""


class Store(Protocol):
    """Sessions and events; every method may raise when the store is unavailable."""

    @property
    def kind(self) -> str:
        """ "sqlite" or "redis": names the dependency in /healthz and the metrics."""
        ...

    async def open(self) -> None:
        """Connect, or create the store where it does not exist yet."""
        ...

    async def sessions(self) -> list[SessionRecord]:
        """Every stored session."""
        ...

    async def write(self, batch: Batch) -> None:
        """Apply `batch` (see `Batch` for the order); all of it or, on error, none."""
        ...

    async def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]:
        """Events, oldest first, optionally of one session and after `since` (wall clock)."""
        ...

    async def prune(self, before: float) -> int:
        """Delete up to `PRUNE_BATCH` events from before `before` (wall clock); how many."""
        ...

    async def check(self) -> Checked:
        """Whether the store is still the one opened; recreate it if it is gone."""
        ...

    async def close(self) -> None:
        """Release the store."""
        ...

    # -- the ledger: one account per session (siesta.ledger), kept by
    # siesta.savings.keeper; written through the write-behind queue (`Batch.accounts`),
    # read whole at start-up, in O(sessions) --

    async def accounts(self) -> list[Account]:
        """Every stored ledger account (deleted sessions' too), by session id."""
        ...

    # -- access tokens of sessions (gateway.auth mode token, siesta.auth.tokens): written
    # through the write-behind queue (`Batch.tokens`), read whole at start-up --

    async def tokens(self) -> dict[str, str]:
        """Every stored session access token, by session id."""
        ...
