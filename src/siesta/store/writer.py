"""The write-behind queue between the lifecycle and the store.

The lifecycle changes a session's state in memory first (that is the truth about
its backend), then hands the record here: `record`, `register`, `delete` and
`touch` return at once and never raise. One task writes what is pending in
batches; when the store fails (a lock held elsewhere, a full disk, Redis down) the
batch is kept, newer writes are merged into it, and it is retried with backoff
until it is durable. Nothing is ever rolled back to fit what the store holds.

The task also checks, every `check_every` seconds, that the store is still the
one it opened: a SQLite file deleted or replaced, or a Redis emptied by a restart,
is reported loudly and rewritten from the truth in memory (`snapshot`).

Used by `siesta.lifecycle`, which owns one; the store's mode is written to `Health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from siesta.core.model import Transition
from siesta.health import Health
from siesta.ledger import Account

from .base import PRUNE_BATCH, Batch, Registration, SessionRecord, Store

log = logging.getLogger("siesta.store")

RETRY_FIRST = 0.05
"""Seconds before the first retry of a failed write: a brief lock clears by then."""

RETRY_MAX = 5.0
"""Seconds between retries at most: a store that is back is written to within this."""

CHECK_EVERY = 5.0
"""Seconds between checks that the store is still the one opened (a stat, or one Redis GET)."""

PRUNE_EVERY = 3600.0
"""Seconds between prunings of events past the retention: an hour's excess is small."""

MAX_PENDING_EVENTS = 100_000
"""Events kept while the store is down (about 20 MB); the oldest are dropped past this."""

Snapshot = Callable[[], Batch]


class Recorder:
    """Pending writes, and the task that makes them durable."""

    def __init__(
        self,
        store: Store,
        health: Health,
        *,
        snapshot: Snapshot = Batch,
        check_every: float = CHECK_EVERY,
        retention: float | None = None,
    ):
        self.store = store
        self.snapshot = snapshot
        self.retention = retention
        self.dropped_events = 0
        self.pruned = 0
        self._health = health
        self._name = "store"
        self._kind = store.kind
        self._check_every = check_every
        self._pending = Batch()
        self._writing: Batch | None = None
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._next_check = 0.0
        self._next_prune = 0.0
        health.of(self._name)

    # -- what the lifecycle hands over (never waits, never raises) ----------------

    def register(self, session_id: str, template: str, labels: dict[str, str], now: float) -> None:
        self._pending.registered[session_id] = Registration(template, dict(labels), now)
        self._kick()

    def record(self, record: SessionRecord, event: Transition | None = None) -> None:
        self._pending.records[record.id] = record
        if event is not None:
            self._add_event(event)
        self._kick()

    def touch(self, last_seen: dict[str, float]) -> None:
        pending = self._pending.last_seen
        for sid, at in last_seen.items():
            pending[sid] = max(at, pending.get(sid, at))
        self._kick()

    def delete(self, session_id: str) -> None:
        self._pending.delete(session_id)
        self._kick()

    def save_account(self, account: Account) -> None:
        """Queue a session's ledger account (the savings keeper's writes)."""
        self._pending.accounts[account.session] = account
        self._kick()

    def save_token(self, session_id: str, token: str) -> None:
        """Queue a session's access token (`siesta.auth.tokens`: new, or rotated)."""
        self._pending.tokens[session_id] = token
        self._kick()

    def _add_event(self, event: Transition) -> None:
        events = self._pending.events
        events.append(event)
        if len(events) > MAX_PENDING_EVENTS:
            del events[0]
            self.dropped_events += 1
            if self.dropped_events == 1:
                log.error(
                    "the %s store has been down too long: events are being dropped, oldest"
                    " first (sessions' states are kept)",
                    self._kind,
                )

    def _kick(self) -> None:
        self._drained.clear()
        self._wakeup.set()

    @property
    def pending(self) -> int:
        """Writes not yet durable (queued, or being written)."""
        writing = len(self._writing) if self._writing is not None else 0
        return len(self._pending) + writing

    def unwritten_events(self, session: str | None, since: float | None) -> list[Transition]:
        """Events not yet durable (being written, or queued), oldest first, optionally of one
        session and after `since`: what a reader of the store must add to be up to date."""
        batches = [b for b in (self._writing, self._pending) if b is not None]
        return [
            e
            for b in batches
            for e in b.events
            if (session is None or e.session == session) and (since is None or e.at > since)
        ]

    async def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]:
        """Events as `Store.events` gives them, with those not yet durable after them: what
        has happened, whatever the write-behind queue holds. Raises what the store raises."""
        stored = await self.store.events(session, since, limit)
        seen = set(stored)
        later = [e for e in self.unwritten_events(session, since) if e not in seen]
        return (stored + later)[:limit]

    # -- the writer task ----------------------------------------------------------

    async def run(self) -> None:
        """Write pending batches until cancelled; never raises (failures are retried)."""
        delay = RETRY_FIRST
        while True:
            if not self._pending:
                self._drained.set()
                await self._idle()
            try:
                await self._check()
                await self._write_pending()
                await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                self._next_check = 0.0  # a store that comes back is checked first
                continue
            if self._health.ok(self._name):
                log.warning("the %s store answers again: pending writes are durable", self._kind)
            delay = RETRY_FIRST

    async def _idle(self) -> None:
        """Wait for writes, or until the store is due for a check or a pruning."""
        due = (
            self._next_check if self.retention is None else min(self._next_check, self._next_prune)
        )
        wait = max(0.0, due - time.monotonic())  # without retention, pruning is never due
        self._wakeup.clear()
        if not self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)

    async def _check(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        checked = await self.store.check()
        self._next_check = now + self._check_every
        if checked.lost:
            self._health.of(self._name).lost += 1
            log.error(
                "STORE LOST: %s; writing the state siesta holds again (events recorded"
                " before this are gone)",
                checked.detail,
            )
            self._pending = self.snapshot().then(self._pending)

    async def _prune(self) -> None:
        """Delete one batch of events past the retention when due; pending writes go
        between batches (the next batch comes on the next turn of the loop)."""
        now = time.monotonic()
        if self.retention is None or now < self._next_prune:
            return
        removed = await self.store.prune(time.time() - self.retention)
        self.pruned += removed
        if removed < PRUNE_BATCH:
            self._next_prune = now + PRUNE_EVERY
            if self.pruned:
                log.info("pruned %d events older than the retention", self.pruned)
                self.pruned = 0

    async def _write_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, Batch()
        self._writing = batch
        try:
            await self.store.write(batch)
        except BaseException:
            self._pending = batch.then(self._pending)  # kept, with newer writes merged in
            raise
        finally:
            self._writing = None

    def _failed(self, exc: Exception) -> None:
        detail = f"{type(exc).__name__}: {exc}"
        if self._health.degraded(self._name, detail):
            log.error(
                "the %s store failed (%s): siesta goes on from memory and retries the"
                " writes (%d pending) until they are durable",
                self._kind,
                detail,
                self.pending,
            )
        else:
            log.debug("the %s store still fails: %s", self._kind, detail)

    async def flush(self, timeout: float) -> bool:
        """Wait until every pending write is durable, at most `timeout` seconds."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True
