"""What the savings keeper (`siesta.savings.keeper`) reads and writes of the store,
without a store call on the event loop.

The keeper was written against a blocking store: it reads the accounts when it is
made, writes one account per event, and reads a session's events once to rebuild an
account for a store older than the ledger. `StoredLedger` gives it the same three
calls: the accounts (and, for such an old store, its events) are read once, off the
loop, by `load` before the lifecycle starts; writes go to the write-behind queue.
Used by `siesta.app`.
"""

from __future__ import annotations

from typing import Protocol

from siesta.core.model import Transition
from siesta.ledger import Account

from .base import Store
from .writer import Recorder

MAX_REBUILD_EVENTS = 1_000_000
"""Events read at start-up to rebuild the accounts of a store older than the ledger."""


class LedgerStore(Protocol):
    """The calls the keeper makes (a blocking `SqliteStore` has them too, for tests)."""

    def accounts(self) -> list[Account]: ...

    def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]: ...

    def save_account(self, account: Account) -> None: ...


class StoredLedger:
    """The ledger's side of the store: read once at start-up, written behind."""

    def __init__(self, recorder: Recorder):
        self._recorder = recorder
        self._accounts: list[Account] = []
        self._events: dict[str, list[Transition]] = {}

    async def load(self, store: Store) -> list[Account]:
        """Read the stored accounts; with none at all, the events to rebuild them from."""
        self._accounts = await store.accounts()
        self._events = {}
        if not self._accounts:
            for event in await store.events(limit=MAX_REBUILD_EVENTS):
                self._events.setdefault(event.session, []).append(event)
        return self._accounts

    def accounts(self) -> list[Account]:
        return list(self._accounts)

    def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]:
        """The events read by `load` of `session` (only kept for a store older than the
        ledger, and only until the keeper has rebuilt that session's account)."""
        if session is None:
            return []
        found = [e for e in self._events.pop(session, []) if since is None or e.at > since]
        return found[:limit]

    def save_account(self, account: Account) -> None:
        self._recorder.save_account(account)
