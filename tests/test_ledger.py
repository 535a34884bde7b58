"""The ledger: awake, asleep and always-on seconds from an event log (pure, no clock)."""

from __future__ import annotations

import pytest

from siesta.core.model import State, Transition
from siesta.ledger import Usage, total, usage

A, W, S, Z, F = State.AWAKE, State.WAKING, State.STOPPING, State.ASLEEP, State.FAILED


def ev(at: float, old: State, new: State, session: str = "alice") -> Transition:
    return Transition(session, at, old, new, "test")


def test_one_wake_and_sleep_from_creation() -> None:
    """Created at 0, woken at 100 (awake from 100, waking counts as running), asleep at
    160 after a 10s stop: 70s running, the rest asleep, until now."""
    events = [ev(100, Z, W), ev(102, W, A), ev(150, A, S), ev(160, S, Z)]
    got = usage(events, now=1000, since={"alice": 0})["alice"]
    assert got == Usage(awake_seconds=60, asleep_seconds=940, wakes=1, sleeps=1)
    assert got.always_on_seconds == 1000
    assert got.saved_fraction == pytest.approx(0.94)


def test_still_awake_counts_until_now() -> None:
    """A session awake at `now` has run since its wake began."""
    events = [ev(10, Z, W), ev(11, W, A)]
    got = usage(events, now=20, since={"alice": 0})["alice"]
    assert (got.awake_seconds, got.asleep_seconds) == (10, 10)


def test_a_session_without_events_slept_since_creation() -> None:
    """Nothing happened: all of its time was slept."""
    got = usage([], now=50, since={"bob": 20})["bob"]
    assert got == Usage(asleep_seconds=30)
    assert got.saved_fraction == 1.0


def test_without_a_start_time_tracking_begins_at_the_first_event() -> None:
    """A session known only from events starts at its first event, in its old state."""
    events = [ev(100, A, S), ev(105, S, Z)]
    got = usage(events, now=200)["alice"]
    assert (got.awake_seconds, got.asleep_seconds, got.sleeps) == (5, 95, 1)


def test_events_before_creation_belong_to_an_earlier_session() -> None:
    """A re-created id ignores the events of the session that had it before."""
    events = [ev(10, Z, W), ev(11, W, A), ev(40, A, Z), ev(60, Z, W), ev(62, W, A)]
    got = usage(events, now=100, since={"alice": 50})["alice"]
    assert (got.awake_seconds, got.asleep_seconds, got.wakes) == (40, 10, 1)


def test_backend_exit_and_failures() -> None:
    """An exited backend is a sleep; a FAILED session runs nothing; a re-adoption after
    a restart (AWAKE -> AWAKE) keeps it running."""
    events = [
        ev(0, Z, W),
        ev(1, W, A),
        ev(5, A, A),  # re-adopted
        ev(9, A, Z),  # backend exited
        ev(10, Z, W),
        ev(12, W, F),
    ]
    got = usage(events, now=20, since={"alice": 0})["alice"]
    assert (got.awake_seconds, got.asleep_seconds) == (11, 9)
    assert (got.wakes, got.sleeps) == (1, 1)


def test_unordered_events_and_several_sessions() -> None:
    """Events are sorted by time per session; sessions are independent; totals add up."""
    events = [ev(30, W, A, "b"), ev(20, Z, W, "b"), ev(5, Z, W), ev(6, W, A)]
    got = usage(events, now=40, since={"alice": 0, "b": 0})
    assert got["b"] == Usage(awake_seconds=20, asleep_seconds=20, wakes=1)
    assert got["alice"] == Usage(awake_seconds=35, asleep_seconds=5, wakes=1)
    assert total(got.values()) == Usage(55, 25, 2, 0)
    assert total([]) == Usage()
    assert Usage().saved_fraction == 0.0


def test_clock_going_backwards_never_gives_negative_time() -> None:
    """An event stamped before the previous one (a wall-clock step) adds no time."""
    events = [ev(10, Z, W), ev(8, W, A)]
    got = usage(events, now=5, since={"alice": 0})["alice"]
    assert got.awake_seconds >= 0
    assert got.asleep_seconds >= 0
