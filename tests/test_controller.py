"""The controller on a fake clock, and the lifecycle's single owner of state, with
real backend processes (`python -m http.server`) and a real SQLite store."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from siesta.config import Config
from siesta.controller import Controller
from siesta.core.lifecycle import TransitionError, backoff_delay, check_transition
from siesta.core.model import State
from siesta.core.policy import decide
from siesta.lifecycle import Lifecycle
from siesta.providers.local import LocalProvider
from siesta.store.sqlite import SqliteStore
from siesta.testing import FakeClock

MINUTE = 60.0


def _config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "templates": {
                "web": {
                    "command": [
                        sys.executable,
                        "-m",
                        "http.server",
                        "{port}",
                        "--bind",
                        "127.0.0.1",
                    ],
                    "ready": {"http": "/"},
                    "idle_timeout": "15m",
                    "stop_grace": "2s",
                }
            },
            "sessions": {"alice": {"template": "web"}},
        }
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Lifecycle, Controller, FakeClock]]:
    """A lifecycle and controller sharing a fake clock; backends are real processes."""
    config = _config(tmp_path)
    clock = FakeClock()
    store = SqliteStore(config.store)
    provider = LocalProvider(config.templates, tmp_path / "logs")
    lifecycle = Lifecycle(config.templates, store, provider, clock=clock)
    await lifecycle.start(config.sessions)
    controller = Controller(lifecycle, config.templates, clock=clock)
    yield lifecycle, controller, clock
    await controller.close()
    await lifecycle.shutdown()
    store.close()


async def test_sleeps_exactly_when_idle_timeout_is_reached(
    world: tuple[Lifecycle, Controller, FakeClock],
) -> None:
    """Woken at t0, untouched: not asleep at t0+14:59.9, asleep at t0+15:00."""
    lifecycle, controller, clock = world
    session = await lifecycle.wake("alice", "test")
    pid = session.pid
    assert controller.next_due("alice") == clock.monotonic() + 15 * MINUTE
    clock.advance(15 * MINUTE - 0.1)
    assert controller.tick() == []
    clock.advance(0.1)
    assert controller.tick() == ["alice"]
    await controller.close()
    assert session.state is State.ASLEEP
    assert pid is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    reason = next(e for e in lifecycle._store.events("alice") if e.new is State.STOPPING).reason
    assert reason == "idle for 15m >= idle_timeout 15m"
    assert controller.next_due("alice") is None


async def test_activity_postpones_the_sleep(world: tuple[Lifecycle, Controller, FakeClock]) -> None:
    """Traffic at +10m moves the sleep to +25m; a request in flight holds it off."""
    lifecycle, controller, clock = world
    session = await lifecycle.wake("alice", "test")
    clock.advance(10 * MINUTE)
    session.activity.last_activity = clock.monotonic()
    clock.advance(5 * MINUTE)
    assert controller.tick() == []
    assert controller.next_due("alice") == clock.monotonic() + 10 * MINUTE
    session.activity.inflight = 1
    clock.advance(10 * MINUTE)
    assert controller.tick() == []
    session.activity.inflight = 0
    clock.advance(15 * MINUTE)
    assert controller.tick() == ["alice"]


async def test_sleeping_sessions_are_not_in_the_timer_heap(
    world: tuple[Lifecycle, Controller, FakeClock],
) -> None:
    """A session that never woke has no check scheduled: it costs the controller nothing."""
    _, controller, clock = world
    assert controller.next_due("alice") is None
    clock.advance(24 * 60 * MINUTE)
    assert controller.tick() == []


async def test_request_racing_a_sleep_wakes_the_session_again(
    world: tuple[Lifecycle, Controller, FakeClock],
) -> None:
    """A wake asked while the sleep is under way waits for it, then starts anew."""
    lifecycle, _, _ = world
    first = (await lifecycle.wake("alice", "first")).pid
    sleeping = asyncio.create_task(lifecycle.sleep("alice", "idle"))
    await asyncio.sleep(0)  # the sleep task runs up to its first await: STOPPING
    assert lifecycle.sessions["alice"].state is State.STOPPING
    session = await lifecycle.wake("alice", "request during sleep")
    assert await sleeping is True
    assert session.state is State.AWAKE
    assert session.pid != first
    moves = [(e.old, e.new) for e in lifecycle._store.events("alice")]
    assert moves[-4:] == [
        (State.AWAKE, State.STOPPING),
        (State.STOPPING, State.ASLEEP),
        (State.ASLEEP, State.WAKING),
        (State.WAKING, State.AWAKE),
    ]


def test_transitions_outside_the_state_machine_are_refused() -> None:
    """ASLEEP cannot jump to STOPPING; AWAKE cannot go back to WAKING."""
    check_transition(State.ASLEEP, State.WAKING)
    with pytest.raises(TransitionError):
        check_transition(State.ASLEEP, State.STOPPING)
    with pytest.raises(TransitionError):
        check_transition(State.AWAKE, State.WAKING)


def test_backoff_doubles_and_is_capped() -> None:
    """30s, 60s, 120s ... never above the cap."""
    assert [backoff_delay(n, 30) for n in (1, 2, 3)] == [30, 60, 120]
    assert backoff_delay(20, 30, cap=600) == 600


def test_idle_rule_decision_carries_its_reason() -> None:
    """The decision says why, and when to look again."""
    busy = decide(now=100, last_activity=0, inflight=2, idle_timeout=60)
    assert not busy.sleep
    assert busy.next_check == 160
    idle = decide(now=100, last_activity=30, inflight=0, idle_timeout=60)
    assert idle.sleep
    assert idle.reason == "idle for 1m10s >= idle_timeout 1m"
    recent = decide(now=100, last_activity=80, inflight=0, idle_timeout=60)
    assert not recent.sleep
    assert recent.next_check == 140
