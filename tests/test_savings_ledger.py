"""The live ledger with a real SQLite store: kept per event, persisted, read without
the event log; and GET /api/savings on a real `siesta up`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from siesta.core.model import Session, State, Transition
from siesta.ledger import accounts_from, closed_at
from siesta.savings import report
from siesta.savings.costing import Model
from siesta.savings.keeper import LedgerKeeper
from siesta.savings.settings import SavingsConf
from siesta.store.sqlite import SqliteStore

from .admin import client, launch_admin
from .conftest import Launcher

Z, W, A, S = State.ASLEEP, State.WAKING, State.AWAKE, State.STOPPING


class Lifecycle:
    """The part of the lifecycle the keeper reads: sessions and its observers."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.observers: list[Callable[[Transition], None]] = []

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def add(self, sid: str, created: float) -> None:
        self.sessions[sid] = Session(sid, "web", created=created)

    def emit(self, event: Transition) -> None:
        for observer in self.observers:
            observer(event)


def cycle(sid: str, at: float) -> list[Transition]:
    """One wake (10s after `at`, 1s to start) and sleep (60s later, 2s to stop)."""
    return [
        Transition(sid, at + 10, Z, W, "request"),
        Transition(sid, at + 11, W, A, "request", 1.0),
        Transition(sid, at + 70, A, S, "idle"),
        Transition(sid, at + 72, S, Z, "idle"),
    ]


def test_accounts_are_kept_per_event_and_survive_a_restart(tmp_path: Path) -> None:
    """Each event updates and stores the session's account; a new keeper on the same
    store (a restart) reads the accounts back and carries on where they stopped."""
    store = SqliteStore(tmp_path / "state.db")
    life = Lifecycle()
    life.add("alice", created=1000.0)
    LedgerKeeper(store, life, clock=lambda: 2000.0)
    for event in cycle("alice", 1000.0):
        life.emit(event)
    assert store.accounts()[0].wakes == 1
    store.close()

    store = SqliteStore(tmp_path / "state.db")
    life2 = Lifecycle()
    life2.add("alice", created=1000.0)
    again = LedgerKeeper(store, life2, clock=lambda: 2000.0)
    for event in cycle("alice", 1100.0):
        life2.emit(event)
    (alice,) = again.snapshot()
    assert (alice.wakes, alice.sleeps) == (2, 2)
    assert alice.awake_seconds == 2 * 62
    assert alice.tracked_seconds == 1000
    assert alice.wake_times.count == 2
    store.close()


def test_a_store_older_than_the_ledger_is_rebuilt_once_from_its_events(tmp_path: Path) -> None:
    """Events stored before the ledger existed are read once, for a session with no
    account, to rebuild it; from then on the account is stored."""
    store = SqliteStore(tmp_path / "state.db")
    store.register("alice", "web", {}, 0.0)
    for event in cycle("alice", 0.0):
        record = store.sessions()[0]
        store.save(record, event)
    life = Lifecycle()
    life.add("alice", created=0.0)
    keeper = LedgerKeeper(store, life, clock=lambda: 100.0)
    assert store.accounts() == []
    (alice,) = keeper.snapshot()
    assert (alice.wakes, alice.awake_seconds, alice.asleep_seconds) == (1, 62, 38)
    assert [a.session for a in store.accounts()] == ["alice"]


def test_a_recreated_session_starts_a_new_account(tmp_path: Path) -> None:
    """A session deleted and created again under the same id (a new creation time)
    starts from zero; a deleted session's account stays in the report."""
    store = SqliteStore(tmp_path / "state.db")
    life = Lifecycle()
    life.add("alice", created=0.0)
    life.add("bob", created=0.0)
    keeper = LedgerKeeper(store, life, clock=lambda: 500.0)
    for event in cycle("alice", 0.0) + cycle("bob", 0.0):
        life.emit(event)
    del life.sessions["bob"]
    life.add("alice", created=200.0)
    life.emit(Transition("alice", 300.0, Z, W, "request"))
    accounts = {a.session: a for a in keeper.snapshot()}
    assert accounts["alice"].created == 200.0
    assert accounts["alice"].wakes == 0
    assert accounts["alice"].running
    assert accounts["bob"].wakes == 1


def test_savings_reads_accounts_never_the_event_log(tmp_path: Path) -> None:
    """With 4,000 events stored for 20 sessions, the savings report issues no SQL
    statement on the events table (traced on the store's own connection), and it
    equals the answer rebuilt from all the events."""
    store = SqliteStore(tmp_path / "state.db")
    life = Lifecycle()
    events: list[Transition] = []
    for n in range(20):
        sid = f"s{n}"
        life.add(sid, created=0.0)
        store.register(sid, "web", {}, 0.0)
        for k in range(50):
            events += cycle(sid, k * 100.0)
    keeper = LedgerKeeper(store, life, clock=lambda: 20_000.0)
    for event in events:
        life.emit(event)
    store._db.executemany(
        "INSERT INTO events (at, session, old, new, reason) VALUES (?, ?, ?, ?, ?)",
        [(e.at, e.session, e.old.value, e.new.value, e.reason) for e in events],
    )
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    accounts = keeper.snapshot(20_000.0)
    got = report.to_json(report.build(accounts, SavingsConf(), Model(), 20_000.0))
    store._db.set_trace_callback(None)
    assert not [s for s in statements if "events" in s]
    assert len(got["sessions"]) == 20
    rebuilt = accounts_from(events, {f"s{n}": ("web", 0.0) for n in range(20)})
    assert [closed_at(rebuilt[a.session], 20_000.0) for a in accounts] == accounts
    assert got["total"]["wakes"] == 1000
    assert got["total"]["awake_s"] == pytest.approx(20 * 50 * 62)


def test_an_unwritable_store_keeps_the_account_in_memory(tmp_path: Path) -> None:
    """A store write that fails (here: the connection made read-only) is logged; the
    account in memory stays right, and the next good write stores it."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    life = Lifecycle()
    life.add("alice", created=0.0)
    keeper = LedgerKeeper(store, life, clock=lambda: 100.0)
    store._db.execute("PRAGMA query_only = ON")
    for event in cycle("alice", 0.0)[:2]:
        life.emit(event)
    assert keeper.accounts["alice"].wakes == 1
    assert store.accounts() == []
    store._db.execute("PRAGMA query_only = OFF")
    for event in cycle("alice", 0.0)[2:]:
        life.emit(event)
    assert store.accounts()[0].sleeps == 1


def test_api_savings_per_session_template_and_total(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/savings on a real siesta: alice woken and put to sleep has awake time,
    one wake with its wake time, and costs; bob never woke and saved all his time; the
    templates and the total add up; every coefficient's source is given."""
    sessions = {"alice": {"template": "web"}, "bob": {"template": "web"}}
    _, base = launch_admin(siesta, monkeypatch, sessions=sessions)
    with client(base) as api:
        api.post("/api/sessions/alice/wake").raise_for_status()
        api.post("/api/sessions/alice/sleep").raise_for_status()
        savings = api.get("/api/savings").json()
    by_id = {s["id"]: s for s in savings["sessions"]}
    alice, bob = by_id["alice"], by_id["bob"]
    assert alice["awake_s"] > 0
    assert (alice["wakes"], alice["sleeps"]) == (1, 1)
    assert alice["wake_p50_s"] > 0
    assert bob["awake_s"] == 0
    assert bob["asleep_s"] > 0
    assert bob["awake_share"] == 0
    for key in ("id", "awake_s", "asleep_s", "wakes", "saved_usd", "saved_kg_co2e"):
        assert key in alice
    (web,) = savings["templates"]
    assert web["sessions"] == 2
    assert web["awake_s"] == pytest.approx(alice["awake_s"] + bob["awake_s"])
    assert savings["total"]["wakes"] == 1
    assert savings["region"]["code"] == "WORLD"
    assert "OpenCost" in savings["sources"]["prices"]
    assert "Cloud Carbon Footprint" in savings["sources"]["energy"]


class Meter:
    """A sampler's answers (siesta.resources.Sampler.totals), given by the test."""

    def __init__(self) -> None:
        self.cpu, self.memory, self.fail = 0.0, 0.0, False

    def totals(self, session_id: str) -> Any:
        if self.fail:
            raise RuntimeError("sampler down")
        return Used(self.cpu, self.memory, 2**30)


@dataclass(frozen=True)
class Used:
    cpu_seconds: float
    memory_gib_hours: float
    peak_memory_bytes: int


def test_usage_from_the_sampler_when_asleep_and_live(tmp_path: Path) -> None:
    """The sampler's sleep hook adds an awake period's use (30 CPU-seconds over its 62s
    run: 0.484 cores at peak); while awake again, the snapshot adds what the sampler
    counted since (its totals minus what was already added); a failing sampler shows
    no live use, never an error."""
    store = SqliteStore(tmp_path / "state.db")
    life = Lifecycle()
    life.add("alice", created=0.0)
    meter = Meter()
    keeper = LedgerKeeper(store, life, clock=lambda: 500.0)
    keeper.measure_with(meter)
    for event in cycle("alice", 0.0):
        life.emit(event)
    meter.cpu, meter.memory = 30.0, 0.5
    keeper.on_usage("alice", Used(30.0, 0.5, 2**30))
    (stored,) = store.accounts()
    assert (stored.cpu_seconds, stored.memory_gib_hours) == (30.0, 0.5)
    assert stored.peak_cores == pytest.approx(30 / 62)
    life.emit(Transition("alice", 200.0, Z, W, "request"))
    life.emit(Transition("alice", 201.0, W, A, "request", 1.0))
    meter.cpu, meter.memory = 40.0, 0.75
    (alice,) = keeper.snapshot(500.0)
    assert (alice.cpu_seconds, alice.memory_gib_hours) == (40.0, 0.75)
    meter.fail = True
    (alice,) = keeper.snapshot(500.0)
    assert alice.cpu_seconds == 30.0
    keeper.on_usage("nobody", Used(1.0, 1.0, 1))  # an unknown session is ignored


def test_a_damaged_ledger_row_is_skipped_and_rebuilt(tmp_path: Path) -> None:
    """A ledger row that is not a valid account (a damaged file, a bad write) is
    skipped with a warning, not an error; the keeper rebuilds that session's account
    from its events, and the report carries on."""
    store = SqliteStore(tmp_path / "state.db")
    store.register("alice", "web", {}, 0.0)
    for event in cycle("alice", 0.0):
        store.save(store.sessions()[0], event)
    store._db.execute("INSERT INTO ledger (session, data) VALUES ('alice', '{\"wakes\": 1}')")
    store._db.execute("INSERT INTO ledger (session, data) VALUES ('bob', 'not json')")
    assert store.accounts() == []
    life = Lifecycle()
    life.add("alice", created=0.0)
    (alice,) = LedgerKeeper(store, life, clock=lambda: 100.0).snapshot()
    assert (alice.wakes, alice.awake_seconds) == (1, 62)
