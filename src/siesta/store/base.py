"""The store interface: sessions, and the event log of their transitions.

The lifecycle runner is the only writer; `siesta status` reads. Writes happen
on transitions only, never per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from siesta.core.model import Endpoint, Session, State, Transition
from siesta.ledger import Account


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as stored: enough to rebuild it and re-adopt its backend."""

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
        )


class Store(Protocol):
    """Sessions and events. Implementations must be safe to open from a second process."""

    def register(self, session_id: str, template: str, labels: dict[str, str], now: float) -> None:
        """Add a session (ASLEEP) unless it exists; its template and labels are refreshed."""
        ...

    def sessions(self) -> list[SessionRecord]:
        """Every stored session."""
        ...

    def save(self, record: SessionRecord, event: Transition | None = None) -> None:
        """Write a session's state (and the event that changed it) atomically."""
        ...

    def touch(self, last_seen: dict[str, float]) -> None:
        """Record when sessions last saw traffic (wall clock), in one batch."""
        ...

    def delete(self, session_id: str) -> None:
        """Forget a session (its events stay)."""
        ...

    def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]:
        """Events, oldest first, optionally of one session and after `since` (wall clock)."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...

    # -- the ledger: one account per session (siesta.ledger), written by
    # siesta.savings.keeper on its transitions; read whole, in O(sessions) --

    def accounts(self) -> list[Account]:
        """Every stored ledger account (deleted sessions' too), by session id."""
        ...

    def save_account(self, account: Account) -> None:
        """Write one session's ledger account, replacing the stored one."""
        ...
