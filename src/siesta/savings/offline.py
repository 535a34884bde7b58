"""The ledger without a running siesta: from its store, or from a replayed trace.

Used by `siesta report` and `siesta advise`. They read the store directly rather than
the admin API: the accounts are stored on every transition, so the answer is the same
whether siesta runs (SQLite's WAL lets a second process read) or has stopped, and
needs no token. What a running siesta knows and the store does not is only the CPU an
awake session has used since its last sleep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from siesta import replay
from siesta.config import Config
from siesta.ledger import Account, accounts_from, closed_at
from siesta.store.sqlite import SqliteStore

from . import replayed
from .keeper import MAX_REBUILD_EVENTS
from .report import awake_spans

MAX_TIMELINE_EVENTS = 100_000
"""Events read for the timeline chart (the window's, not the whole log)."""


class NoData(Exception):
    """Nothing to report on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Accounts up to `end`, the sessions still present, and the timeline's spans."""

    accounts: list[Account]
    start: float
    end: float
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    active: frozenset[str] | None = None


def from_store(config: Config, timeline: float, now: float | None = None) -> Snapshot:
    """What the store of `config` holds, up to now; the timeline covers `timeline` s."""
    if not config.store.exists():
        raise NoData(f"no state yet at {config.store}: siesta has not run with this config")
    at = time.time() if now is None else now
    store = SqliteStore(config.store)
    try:
        records = store.sessions()
        stored = {a.session: a for a in store.accounts()}
        missing = {r.id: (r.template, r.created) for r in records if r.id not in stored}
        if missing:  # a store written before the ledger existed
            events = store.events(None, None, MAX_REBUILD_EVENTS)
            stored |= accounts_from(events, missing)
        start = at - timeline
        window = store.events(None, start, MAX_TIMELINE_EVENTS)
    finally:
        store.close()
    accounts = [closed_at(a, at) for _, a in sorted(stored.items())]
    running = {a.session: a.running for a in accounts}
    return Snapshot(
        accounts,
        start,
        at,
        awake_spans(window, start, at, running),
        frozenset(r.id for r in records),
    )


def from_trace(config: Config, trace: Path, wake_seconds: float) -> Snapshot:
    """What siesta would have done on a recorded trace (see `siesta policy replay`).

    `replay.TraceError` (a `ValueError`) when the trace cannot be replayed.
    """
    rows = replay.read_trace(trace)
    result = replay.replay(rows, replay.setups_from(config), wake_seconds=wake_seconds)
    accounts = replayed.accounts(result, rows)
    events = replayed.transitions(result)
    running = {a.session: False for a in accounts}
    spans = awake_spans(events, result.start, result.end, running)
    return Snapshot(accounts, result.start, result.end, spans)
