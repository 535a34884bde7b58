"""The live ledger: one account per session, updated on each event, kept in the store.

`siesta.app` makes one `LedgerKeeper` before the lifecycle starts (so it sees the
events of re-adoption at start-up); the admin API reads `snapshot()` for
/api/savings. An event costs one account update and one store write, never a read of
the event log: the savings answer is O(sessions) however long siesta has run.

Resource use comes from the sampler (`siesta.resources.Sampler`, the `decisions`
side's contract in TEAM.md): `on_usage` takes the totals a session used over an awake
period when it goes to sleep; `snapshot` adds what an awake session has used since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from siesta.core.model import Session, Transition
from siesta.ledger import Account, accounts_from, add_usage, apply, closed_at, open_account
from siesta.store.accounts import LedgerStore

log = logging.getLogger("siesta.savings")

MAX_REBUILD_EVENTS = 1_000_000
"""Events read to rebuild one session's account from a store older than the ledger."""


class Totals(Protocol):
    """Resources used while awake (the sampler's `Totals`)."""

    @property
    def cpu_seconds(self) -> float: ...
    @property
    def memory_gib_hours(self) -> float: ...
    @property
    def peak_memory_bytes(self) -> int: ...


class Meter(Protocol):
    """What the keeper reads of the sampler: totals used while awake, per session."""

    def totals(self, session_id: str) -> Totals: ...


class Sessions(Protocol):
    """What the keeper reads of the lifecycle."""

    observers: list[Callable[[Transition], None]]
    sessions: dict[str, Session]

    def get(self, session_id: str) -> Session | None: ...


@dataclass(frozen=True, slots=True)
class _Used:
    cpu_seconds: float = 0.0
    memory_gib_hours: float = 0.0


class LedgerKeeper:
    """Keeps every session's `Account` as its events arrive, and writes it to the store."""

    def __init__(
        self,
        store: LedgerStore,
        sessions: Sessions,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._sessions = sessions
        self._clock = clock
        self._meter: Meter | None = None
        self._counted: dict[str, _Used] = {}  # the meter's totals already in the account
        self.accounts: dict[str, Account] = {a.session: a for a in store.accounts()}
        sessions.observers.append(self.on_event)

    def measure_with(self, meter: Meter) -> None:
        """Read live use of awake sessions from `meter` (the resource sampler)."""
        self._meter = meter

    # -- events ---------------------------------------------------------------

    def on_event(self, event: Transition) -> None:
        """A lifecycle observer: apply `event` to its session's account and store it."""
        account = self._account(event.session)
        if account is None:
            return
        self._save(apply(account, event))

    def on_usage(self, session_id: str, used: Totals) -> None:
        """Add what a session used over its awake period that just ended (sampler hook)."""
        account = self.accounts.get(session_id)
        if account is None:
            return
        before = self._counted.get(session_id, _Used())
        self._counted[session_id] = _Used(
            before.cpu_seconds + used.cpu_seconds,
            before.memory_gib_hours + used.memory_gib_hours,
        )
        period = account.last_run_seconds
        self._save(
            add_usage(
                account, used.cpu_seconds, used.memory_gib_hours, used.peak_memory_bytes, period
            )
        )

    def _account(self, session_id: str) -> Account | None:
        """The session's account; a new one when the session is new (or re-created)."""
        session = self._sessions.get(session_id)
        account = self.accounts.get(session_id)
        if session is None:
            return account
        if account is not None and account.created == session.created:
            return account
        if account is None:
            account = self._rebuilt(session)
        if account is None or account.created != session.created:
            account = open_account(session.id, session.template, session.created)
        self._counted.pop(session_id, None)
        return account

    def _rebuilt(self, session: Session) -> Account | None:
        """The account of a session the store knew before it kept a ledger, from its
        events (once: it is stored from then on)."""
        events = self._store.events(session.id, None, MAX_REBUILD_EVENTS)
        if not events:
            return None
        log.info("%s: ledger rebuilt from %d stored events", session.id, len(events))
        spec = {session.id: (session.template, session.created)}
        return accounts_from(events, spec)[session.id]

    def _save(self, account: Account) -> None:
        self.accounts[account.session] = account
        try:
            self._store.save_account(account)
        except Exception:  # the account stays right in memory; the next event writes it
            log.exception("%s: the ledger account could not be stored", account.session)

    # -- reading --------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> list[Account]:
        """Every account (deleted sessions' too) closed up to `now`, with awake sessions'
        use so far, by session id. A session without one yet gets it (and it is stored)."""
        at = self._clock() if now is None else now
        for sid in self._sessions.sessions:
            current = self.accounts.get(sid)
            fresh = self._account(sid)
            if fresh is not None and fresh is not current:
                self._save(fresh)
        return [self._live(closed_at(self.accounts[sid], at)) for sid in sorted(self.accounts)]

    def _live(self, account: Account) -> Account:
        if self._meter is None or not account.running:
            return account
        try:
            totals = self._meter.totals(account.session)
        except Exception:  # a sampler fault shows as no live use, never as an error
            log.exception("%s: the resource sampler failed", account.session)
            return account
        counted = self._counted.get(account.session, _Used())
        cpu = totals.cpu_seconds - counted.cpu_seconds
        memory = totals.memory_gib_hours - counted.memory_gib_hours
        period = account.since - (account.running_since or account.since)
        return add_usage(account, cpu, memory, totals.peak_memory_bytes, period)
