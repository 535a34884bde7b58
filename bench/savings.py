"""Benchmark GET /api/savings's work with a million events: the event log against the ledger.

The claim (issue 11): the savings answer reads one ledger account per session and no
event, so it costs O(sessions) however long siesta has run. Issue 8 measured 2.9 s for
the old answer (every event read and replayed) with 1,000,000 events.

Both ways run in one process, on the same real SQLite store in a temp dir, side by side,
alternately, several rounds:

* `events`: what /api/savings did before the ledger (issue 8's 2.9 s): read every
  event from the store and sum each session's awake and asleep seconds from them (the
  removed `siesta.ledger.usage`, kept here as `summed_from_events`);
* `ledger`: what it does now: read the stored accounts, close them up to now, cost
  them and build the report's JSON (`LedgerKeeper.snapshot`, `report.build`,
  `report.to_json`).

The store holds 1,000 sessions x 250 wake/sleep cycles = 1,000,000 events (inserted in
bulk) and the 1,000 accounts they give. Printed, and written to bench/out/savings.json,
as medians and their ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from siesta.core.model import Session, State, Transition
from siesta.ledger import accounts_from
from siesta.savings import report
from siesta.savings.costing import Model
from siesta.savings.keeper import LedgerKeeper
from siesta.savings.settings import SavingsConf
from siesta.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SESSIONS = int(os.environ.get("SAVINGS_BENCH_SESSIONS", "1000"))
CYCLES = int(os.environ.get("SAVINGS_BENCH_CYCLES", "250"))  # 4 events each
ROUNDS = int(os.environ.get("SAVINGS_BENCH_ROUNDS", "5"))
MOVES = (
    (State.ASLEEP, State.WAKING),
    (State.WAKING, State.AWAKE),
    (State.AWAKE, State.STOPPING),
    (State.STOPPING, State.ASLEEP),
)


class Sessions:
    """The lifecycle as the keeper reads it."""

    def __init__(self, ids: list[str]) -> None:
        self.sessions = {sid: Session(sid, "web", created=0.0) for sid in ids}
        self.observers: list[object] = []

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)


def fill(store: SqliteStore, ids: list[str]) -> list[Transition]:
    events = []
    for sid in ids:
        store.register(sid, "web", {}, 0.0)
        for cycle in range(CYCLES):
            base = cycle * 600.0
            for step, (old, new) in enumerate(MOVES):
                events.append(
                    Transition(
                        sid,
                        base + (0, 2, 300, 302)[step],
                        old,
                        new,
                        "bench",
                        2.0 if step == 1 else None,
                    )
                )
    with store._transaction():  # one transaction, not a million
        store._db.executemany(
            "INSERT INTO events (at, session, old, new, reason, wake_seconds)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(e.at, e.session, e.old.value, e.new.value, e.reason, e.wake_seconds) for e in events],
        )
    # Every session has the same history: one account, rebuilt once, serves them all.
    model = accounts_from(events[: 4 * CYCLES], {ids[0]: ("web", 0.0)})[ids[0]]
    for sid in ids:
        store.save_account(replace(model, session=sid))
    return events


RUNNING = frozenset({State.WAKING, State.AWAKE, State.STOPPING})


def summed_from_events(events: list[Transition], now: float) -> dict[str, tuple[float, float]]:
    """Awake and asleep seconds per session from the event log: the pre-ledger answer."""
    by_session: dict[str, list[Transition]] = {}
    for event in events:
        by_session.setdefault(event.session, []).append(event)
    answer = {}
    for sid, found in by_session.items():
        found.sort(key=lambda e: e.at)
        state, at, awake, asleep = State.ASLEEP, 0.0, 0.0, 0.0
        for event in found:
            span = max(0.0, event.at - at)
            if state in RUNNING:
                awake += span
            else:
                asleep += span
            state, at = event.new, max(at, event.at)
        answer[sid] = (awake, asleep + max(0.0, now - at))
    return answer


def by_events(store: SqliteStore, now: float) -> int:
    return len(summed_from_events(store.events(None, None, 2**62), now))


def by_ledger(keeper: LedgerKeeper, now: float) -> int:
    accounts = keeper.snapshot(now)
    built = report.build(accounts, SavingsConf(), Model(), now)
    return len(report.to_json(built)["sessions"])


def main() -> None:
    ids = [f"s{n:04d}" for n in range(SESSIONS)]
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "state.db")
        began = time.perf_counter()
        events = fill(store, ids)
        took = time.perf_counter() - began
        print(f"{len(events):,} events of {SESSIONS:,} sessions stored in {took:.1f}s")
        keeper = LedgerKeeper(store, Sessions(ids))  # type: ignore[arg-type]
        now = CYCLES * 600.0 + 1000
        timings: dict[str, list[float]] = {"events": [], "ledger": []}
        for _ in range(ROUNDS):
            for name, run in (
                ("events", lambda: by_events(store, now)),
                ("ledger", lambda: by_ledger(keeper, now)),
            ):
                start = time.perf_counter()
                assert run() == SESSIONS
                timings[name].append(time.perf_counter() - start)
        store.close()
    events_s = statistics.median(timings["events"])
    ledger_s = statistics.median(timings["ledger"])
    result = {
        "events": len(events),
        "sessions": SESSIONS,
        "rounds": ROUNDS,
        "events_median_s": events_s,
        "ledger_median_s": ledger_s,
        "speedup": events_s / ledger_s,
    }
    print(f"/api/savings from the event log: {events_s * 1000:,.0f} ms (median of {ROUNDS})")
    print(f"/api/savings from the ledger:    {ledger_s * 1000:,.1f} ms")
    print(f"ledger / event log: {ledger_s / events_s:.4f} ({events_s / ledger_s:,.0f}x faster)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "savings.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
