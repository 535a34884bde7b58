"""The ledger without a running siesta: from its store, or from a replayed trace.

Used by `siesta report` and `siesta advise`. They read the store directly rather than
the admin API: the accounts are stored on every transition, so the answer is the same
whether siesta runs (SQLite's WAL lets a second process read) or has stopped, and
needs no token. What a running siesta knows and the store does not is only the CPU an
awake session has used since its last sleep.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from siesta import replay
from siesta.config import Config
from siesta.core.model import Transition
from siesta.ledger import Account, accounts_from, closed_at
from siesta.store import open_store
from siesta.store.base import SessionRecord

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
    path = config.store_path
    if path is not None and not path.exists():
        raise NoData(f"no state yet at {path}: siesta has not run with this config")
    at = time.time() if now is None else now
    start = at - timeline
    records, stored, window = asyncio.run(_read(config, start))
    accounts = [closed_at(a, at) for _, a in sorted(stored.items())]
    running = {a.session: a.running for a in accounts}
    return Snapshot(
        accounts,
        start,
        at,
        awake_spans(window, start, at, running),
        frozenset(r.id for r in records),
    )


async def _read(
    config: Config, start: float
) -> tuple[list[SessionRecord], dict[str, Account], list[Transition]]:
    """The stored sessions, their accounts (rebuilt for a store older than the ledger),
    and the events since `start`."""
    store = open_store(config.store, config.instance_id)
    try:
        await store.open()
        records = await store.sessions()
        stored = {a.session: a for a in await store.accounts()}
        missing = {r.id: (r.template, r.created) for r in records if r.id not in stored}
        if missing:  # a store written before the ledger existed
            events = await store.events(None, None, MAX_REBUILD_EVENTS)
            stored |= accounts_from(events, missing)
        window = await store.events(None, start, MAX_TIMELINE_EVENTS)
    finally:
        await store.close()
    return records, stored, window


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
