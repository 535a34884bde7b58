"""The ledger: accounts of awake and asleep seconds, wakes, hours of day and wake-time
quantiles, kept one event at a time (pure, no clock)."""

from __future__ import annotations

import pytest

from siesta.core.model import State, Transition
from siesta.ledger import (
    SKETCH_ACCURACY,
    Account,
    Sketch,
    accounts_from,
    add_usage,
    apply,
    closed_at,
    open_account,
    spread,
)

A, W, S, Z, F = State.AWAKE, State.WAKING, State.STOPPING, State.ASLEEP, State.FAILED


def ev(at: float, old: State, new: State, wake: float | None = None) -> Transition:
    return Transition("alice", at, old, new, "test", wake)


def run(events: list[Transition], now: float, created: float = 0.0) -> Account:
    account = open_account("alice", "web", created)
    for event in events:
        account = apply(account, event)
    return closed_at(account, now)


def test_one_wake_and_sleep_from_creation() -> None:
    """Created at 0, woken at 100 (waking counts as running), asleep at 160 after a 10s
    stop: 60s running, the other 940s of 1000 asleep; one wake, one sleep."""
    got = run([ev(100, Z, W), ev(102, W, A, 2.0), ev(150, A, S), ev(160, S, Z)], now=1000)
    assert (got.awake_seconds, got.asleep_seconds) == (60, 940)
    assert (got.wakes, got.sleeps) == (1, 1)
    assert got.tracked_seconds == 1000
    assert got.last_run_seconds == 60
    assert got.wake_times.count == 1


def test_still_awake_counts_until_now() -> None:
    """A session awake at `now` has run since its wake began."""
    got = run([ev(10, Z, W), ev(11, W, A)], now=20)
    assert (got.awake_seconds, got.asleep_seconds) == (10, 10)
    assert got.running


def test_a_session_without_events_slept_since_creation() -> None:
    """Nothing happened: all of its time was slept."""
    got = run([], now=50, created=20)
    assert (got.awake_seconds, got.asleep_seconds, got.wakes) == (0, 30, 0)


def test_backend_exit_failure_and_readoption() -> None:
    """An exited backend is a sleep of the backend (not a `sleep` by policy: AWAKE ->
    ASLEEP counts as one); FAILED runs nothing; AWAKE -> AWAKE (re-adopted after a
    restart) keeps it running."""
    events = [ev(0, Z, W), ev(1, W, A), ev(5, A, A), ev(9, A, Z), ev(10, Z, W), ev(12, W, F)]
    got = run(events, now=20)
    assert (got.awake_seconds, got.asleep_seconds) == (11, 9)
    assert (got.wakes, got.sleeps) == (1, 1)


def test_clock_going_backwards_never_gives_negative_time() -> None:
    """An event stamped before the previous one (a wall-clock step) adds no time, and a
    `now` before the open span adds none either."""
    got = run([ev(10, Z, W), ev(8, W, A)], now=5)
    assert (got.awake_seconds, got.asleep_seconds) == (0, 10)


def test_incremental_equals_rebuilt_from_events() -> None:
    """Applying events one by one gives the same account as rebuilding it from the log,
    which skips the events of an earlier session of the same id (before creation)."""
    events = [ev(10, Z, W), ev(11, W, A), ev(40, A, Z), ev(60, Z, W), ev(62, W, A, 2.0)]
    rebuilt = accounts_from(events, {"alice": ("web", 50.0)})["alice"]
    incremental = open_account("alice", "web", 50.0)
    for event in events[3:]:
        incremental = apply(incremental, event)
    assert rebuilt == incremental
    assert closed_at(rebuilt, 100).awake_seconds == 40
    assert closed_at(rebuilt, 100).asleep_seconds == 10


def test_hours_of_day_are_split_in_utc() -> None:
    """1970-01-01 is a Thursday starting at 00:00 UTC. Awake 01:30 to 03:15: 1800s in
    hour 1, 3600s in hour 2, 900s in hour 3. Tracked from 00:00 to 04:00 is 3600s in
    each of the hours 0 to 3."""
    got = run([ev(5400, Z, W), ev(5401, W, A), ev(11700, A, Z)], now=14400)
    assert got.awake_by_hour[:5] == (0, 1800, 3600, 900, 0)
    assert got.tracked_by_hour[:5] == (3600, 3600, 3600, 3600, 0)
    assert sum(got.awake_by_hour) == got.awake_seconds
    assert sum(got.tracked_by_hour) == got.tracked_seconds


def test_spread_over_more_than_a_day() -> None:
    """Two days and one hour from 23:00: every hour gets 7200s, hour 23 one more hour."""
    got = spread(23 * 3600, 23 * 3600 + 2 * 86400 + 3600)
    assert got[23] == 3 * 3600
    assert set(got[:23]) == {7200}
    assert spread(10, 10) == (0.0,) * 24


def test_wake_time_quantiles_within_the_sketch_accuracy() -> None:
    """100 wakes of 0.01s to 1.00s: p50 is the 50th value (0.50s) and p95 the 95th
    (0.95s), each within 1 % (SKETCH_ACCURACY); sketches merge by adding counts, and an
    empty sketch has no quantile."""
    sketch = Sketch()
    for i in range(1, 101):
        sketch = sketch.add(i / 100)
    assert sketch.count == 100
    p50, p95 = sketch.quantile(0.5), sketch.quantile(0.95)
    assert p50 == pytest.approx(0.50, rel=SKETCH_ACCURACY)
    assert p95 == pytest.approx(0.95, rel=SKETCH_ACCURACY)
    assert sketch.merge(sketch).quantile(0.5) == pytest.approx(p50)
    assert Sketch().quantile(0.5) is None
    assert Sketch().add(0.0).quantile(0.5) == pytest.approx(1e-6, rel=SKETCH_ACCURACY)


def test_usage_adds_up_and_keeps_peaks() -> None:
    """Two awake periods: 30 CPU-seconds over 60s (0.5 cores) and 10 over 100s (0.1):
    40 CPU-seconds in all, peak 0.5 cores; memory GiB-hours add, the peak is the max."""
    account = open_account("alice", "web", 0)
    account = add_usage(account, 30, 0.25, 2**30, period=60)
    account = add_usage(account, 10, 0.5, 2**29, period=100)
    assert account.cpu_seconds == 40
    assert account.memory_gib_hours == 0.75
    assert account.peak_cores == 0.5
    assert account.peak_memory_bytes == 2**30
    assert add_usage(account, 5, 0, 0, period=0).peak_cores == 0.5
