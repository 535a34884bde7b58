"""The controller on a fake clock, and the lifecycle's single owner of state, with
real backend processes (`python -m http.server`), a real SQLite store and, for
warnings, a real HTTP server in the test receiving the webhook."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from siesta.config import Config
from siesta.controller import Controller
from siesta.core.lifecycle import TransitionError, backoff_delay, check_transition
from siesta.core.model import State, Transition
from siesta.lifecycle import Lifecycle
from siesta.providers.local import LocalProvider
from siesta.store.sqlite import ThreadedSqlite
from siesta.testing import FakeClock

MINUTE = 60.0

World = tuple[Lifecycle, Controller, FakeClock]


def _config(tmp_path: Path, policy: dict[str, Any] | None = None) -> Config:
    template: dict[str, Any] = {
        "command": [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
        "ready": {"http": "/"},
        "stop_grace": "2s",
    }
    policies = {}
    if policy is None:
        template["idle_timeout"] = "15m"
    else:
        template["policy"] = "p"
        policies["p"] = policy
    return Config.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "templates": {"web": template},
            "policies": policies,
            "sessions": {"alice": {"template": "web", "labels": {"tier": "gold"}}},
        }
    )


MakeWorld = Callable[[dict[str, Any] | None], Awaitable[World]]


@pytest.fixture
async def make_world(tmp_path: Path) -> AsyncIterator[MakeWorld]:
    """Builds a lifecycle and controller sharing a fake clock; backends are real processes."""
    built: list[tuple[Lifecycle, Controller, ThreadedSqlite]] = []

    async def make(policy: dict[str, Any] | None = None) -> World:
        config = _config(tmp_path, policy)
        clock = FakeClock()
        store = ThreadedSqlite(config.store_path)
        provider = LocalProvider(config.templates, tmp_path / "logs")
        lifecycle = Lifecycle(config.templates, store, provider, clock=clock)
        await lifecycle.start(config.sessions)
        controller = Controller(
            lifecycle, config.template_policies(), provider=provider, clock=clock
        )
        built.append((lifecycle, controller, store))
        return lifecycle, controller, clock

    yield make
    for lifecycle, controller, store in built:
        await controller.close()
        await lifecycle.shutdown()
        await store.close()


@pytest.fixture
async def world(make_world: MakeWorld) -> World:
    """The idle_timeout shorthand: 15m."""
    return await make_world(None)


async def _events(lifecycle: Lifecycle, session: str = "alice") -> list[Transition]:
    """The stored events of `session`, once the write-behind queue has written them."""
    assert await lifecycle.recorder.flush(10.0)
    return await lifecycle.store.events(session)


async def _stop_reason(lifecycle: Lifecycle, session: str = "alice") -> str:
    return next(e for e in await _events(lifecycle, session) if e.new is State.STOPPING).reason


async def test_sleeps_exactly_when_idle_timeout_is_reached(world: World) -> None:
    """Woken at t0, untouched: not asleep at t0+14:59.9, asleep at t0+15:00."""
    lifecycle, controller, clock = world
    session = await lifecycle.wake("alice", "test")
    pid = session.pid
    assert controller.next_due("alice") == clock.monotonic() + 15 * MINUTE
    clock.advance(15 * MINUTE - 0.1)
    assert await controller.tick() == []
    clock.advance(0.1)
    assert await controller.tick() == ["alice"]
    await controller.close()
    assert session.state is State.ASLEEP
    assert pid is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert await _stop_reason(lifecycle) == (
        'idle_timeout: idle_for >= duration("15m") && inflight == 0 [idle_for=15m, inflight=0]'
    )
    assert controller.next_due("alice") is None


async def test_activity_postpones_the_sleep(world: World) -> None:
    """Traffic at +10m moves the sleep to +25m; a request in flight holds it off."""
    lifecycle, controller, clock = world
    session = await lifecycle.wake("alice", "test")
    clock.advance(10 * MINUTE)
    session.activity.last_activity = clock.monotonic()
    clock.advance(5 * MINUTE)
    assert await controller.tick() == []
    assert controller.next_due("alice") == clock.monotonic() + 10 * MINUTE
    session.activity.inflight = 1
    clock.advance(10 * MINUTE)
    assert await controller.tick() == []
    assert controller.next_due("alice") is None  # no timer: the end of the request is awaited
    assert controller.watching("alice")
    clock.advance(15 * MINUTE)
    session.activity.inflight = 0
    session.activity.fell()  # as the gateway does when the response ends
    assert controller.next_due("alice") == clock.monotonic()
    assert await controller.tick() == ["alice"]


async def test_sleeping_sessions_are_not_in_the_timer_heap(world: World) -> None:
    """A session that never woke has no check scheduled: it costs the controller nothing."""
    _, controller, clock = world
    assert controller.next_due("alice") is None
    clock.advance(24 * 60 * MINUTE)
    assert await controller.tick() == []


async def test_request_racing_a_sleep_wakes_the_session_again(world: World) -> None:
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
    moves = [(e.old, e.new) for e in await _events(lifecycle)]
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


# Policies on the fake clock ---------------------------------------------------------------


class _Hooks(ThreadingHTTPServer):
    received: list[dict[str, Any]]
    arrived: threading.Event


class _HookHandler(BaseHTTPRequestHandler):
    server: _Hooks

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.received.append(json.loads(self.rfile.read(length)))
        self.server.arrived.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hooks() -> Iterator[_Hooks]:
    """A real HTTP server on a free port that records the JSON bodies POSTed to it."""
    server = _Hooks(("127.0.0.1", 0), _HookHandler)
    server.received, server.arrived = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _hook_url(server: _Hooks) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/hook"


async def _arrived(server: _Hooks, count: int) -> None:
    for _ in range(500):
        if len(server.received) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} webhook call(s), got {len(server.received)}")


async def test_a_policy_sleeps_exactly_when_its_rule_becomes_true(make_world: MakeWorld) -> None:
    """idle_for > 10m && connections == 0: awake at 10:00.000, asleep at 10:00.001."""
    lifecycle, controller, clock = await make_world(
        {"sleep_when": 'idle_for > duration("10m") && connections == 0'}
    )
    session = await lifecycle.wake("alice", "test")
    start = clock.monotonic()
    assert controller.next_due("alice") == start + 10 * MINUTE + 0.001
    clock.advance(10 * MINUTE)
    assert await controller.tick() == []
    clock.advance(0.001)
    assert await controller.tick() == ["alice"]
    await controller.close()
    assert session.state is State.ASLEEP
    assert await _stop_reason(lifecycle) == (
        'sleep_when: idle_for > duration("10m") && connections == 0 [idle_for=10m, connections=0]'
    )


async def test_not_before_min_awake(make_world: MakeWorld) -> None:
    """A rule true after 1m of idleness, min_awake 5m: asleep at 5:00, not at 4:59.9."""
    lifecycle, controller, clock = await make_world(
        {"sleep_when": 'idle_for >= duration("1m")', "min_awake": "5m"}
    )
    await lifecycle.wake("alice", "test")
    start = clock.monotonic()
    assert controller.next_due("alice") == start + 5 * MINUTE
    clock.advance(5 * MINUTE - 0.1)
    assert await controller.tick() == []
    clock.advance(0.1)
    assert await controller.tick() == ["alice"]
    await controller.close()
    assert await _stop_reason(lifecycle) == ('sleep_when: idle_for >= duration("1m") [idle_for=5m]')


async def test_at_max_lifetime_however_busy(make_world: MakeWorld) -> None:
    """Traffic every minute and a connection open: asleep at max_lifetime all the same."""
    lifecycle, controller, clock = await make_world(
        {"sleep_when": 'idle_for > duration("5m")', "max_lifetime": "30m"}
    )
    session = await lifecycle.wake("alice", "test")
    session.activity.connections = 1
    for _ in range(29):
        clock.advance(MINUTE)
        session.activity.last_activity = clock.monotonic()
        assert await controller.tick() == []
    clock.advance(MINUTE - 0.1)
    assert await controller.tick() == []
    clock.advance(0.1)
    assert await controller.tick() == ["alice"]
    await controller.close()
    assert await _stop_reason(lifecycle) == "max_lifetime: awake for 30m >= 30m"


async def test_keep_awake_when_wins(make_world: MakeWorld) -> None:
    """While a connection is open the session stays awake however idle; then it sleeps."""
    lifecycle, controller, clock = await make_world(
        {
            "sleep_when": 'idle_for > duration("5m")',
            "keep_awake_when": 'connections > 0 && labels.tier == "gold"',
            "check_every": "20s",
        }
    )
    session = await lifecycle.wake("alice", "test")
    session.activity.connections = 1
    clock.advance(60 * MINUTE)
    assert await controller.tick() == []
    assert controller.next_due("alice") is None
    assert controller.watching("alice")
    clock.advance(20)
    session.activity.connections = 0
    session.activity.fell()  # as the gateway does when the connection closes
    assert await controller.tick() == ["alice"]


async def test_warning_fires_warn_before_ahead_and_only_once(
    make_world: MakeWorld, hooks: _Hooks
) -> None:
    """15m rule, warn 5m ahead: the webhook gets the JSON at 10:00, the sleep comes at
    15:00; traffic at 12m postpones the sleep to 27m without a second warning."""
    lifecycle, controller, clock = await make_world(
        {
            "sleep_when": 'idle_for >= duration("15m")',
            "warn_before": "5m",
            "warn": {"webhook": _hook_url(hooks)},
        }
    )
    session = await lifecycle.wake("alice", "test")
    start = clock.monotonic()
    assert controller.next_due("alice") == start + 10 * MINUTE
    clock.advance(10 * MINUTE - 0.1)
    assert await controller.tick() == []
    assert controller.warnings_sent == 0
    clock.advance(0.1)
    assert await controller.tick() == []
    await _arrived(hooks, 1)
    assert hooks.received == [
        {
            "session": "alice",
            "policy": "p",
            "sleep_at": "2023-11-14T22:28:20+00:00",  # FakeClock's wall start + 15m
            "reason": 'foreseen by the policy (not sleep_when: idle_for >= duration("15m") '
            "[idle_for=10m])",
        }
    ]
    assert controller.next_due("alice") == start + 15 * MINUTE
    clock.advance(2 * MINUTE)
    session.activity.last_activity = clock.monotonic()  # traffic at 12m
    clock.advance(3 * MINUTE)
    assert await controller.tick() == []  # 15m: not idle long enough any more
    assert controller.next_due("alice") == start + 27 * MINUTE
    clock.advance(12 * MINUTE)
    assert await controller.tick() == ["alice"]
    await controller.close()
    assert len(hooks.received) == 1
    assert controller.warnings_sent == 1


async def test_a_new_awake_period_gets_a_new_warning(make_world: MakeWorld, hooks: _Hooks) -> None:
    """Once per awake period: after a sleep and a wake, the next sleep is announced too."""
    lifecycle, controller, clock = await make_world(
        {
            "sleep_when": 'idle_for >= duration("2m")',
            "warn_before": "1m",
            "warn": {"webhook": _hook_url(hooks)},
        }
    )
    for round_ in (1, 2):
        await lifecycle.wake("alice", "test")
        clock.advance(MINUTE)
        assert await controller.tick() == []
        await _arrived(hooks, round_)
        clock.advance(MINUTE)
        assert await controller.tick() == ["alice"]
        await controller.close()
    assert len(hooks.received) == 2


async def test_warning_by_command_with_the_environment(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    """The command runs with SIESTA_SESSION, SIESTA_POLICY, SIESTA_SLEEP_AT, SIESTA_REASON."""
    out = tmp_path / "warned.json"
    script = (
        "import json, os, sys; json.dump({k: v for k, v in os.environ.items() "
        "if k.startswith('SIESTA_')}, open(sys.argv[1], 'w'))"
    )
    lifecycle, controller, clock = await make_world(
        {
            "sleep_when": 'idle_for >= duration("10m")',
            "warn_before": "10m",
            "warn": {"command": [sys.executable, "-c", script, str(out)]},
        }
    )
    await lifecycle.wake("alice", "test")  # foreseen 10m ahead: warned at the first check
    assert await controller.tick() == []
    await controller.close()
    assert json.loads(out.read_text()) == {
        "SIESTA_SESSION": "alice",
        "SIESTA_POLICY": "p",
        "SIESTA_SLEEP_AT": "2023-11-14T22:23:20+00:00",
        "SIESTA_REASON": 'foreseen by the policy (not sleep_when: idle_for >= duration("10m") '
        "[idle_for=0s])",
    }
    clock.advance(10 * MINUTE)
    assert await controller.tick() == ["alice"]


async def test_a_failing_webhook_is_logged_and_the_sleep_still_happens(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens at the URL: a warning in the log, the controller carries on."""
    lifecycle, controller, clock = await make_world(
        {
            "sleep_when": 'idle_for >= duration("1m")',
            "warn_before": "30s",
            "warn": {"webhook": "http://127.0.0.1:9/nothing-here"},
        }
    )
    await lifecycle.wake("alice", "test")
    clock.advance(30)
    assert await controller.tick() == []
    await controller.close()
    assert "the sleep warning failed" in caplog.text
    clock.advance(30)
    assert await controller.tick() == ["alice"]


async def test_a_rule_failing_at_run_time_is_counted_and_keeps_the_session_awake(
    make_world: MakeWorld,
) -> None:
    """labels.team does not exist: evaluation_errors counts it, the session stays awake
    and is checked again check_every later."""
    lifecycle, controller, clock = await make_world(
        {"sleep_when": 'labels.team == "x" && idle_for > duration("1m")', "check_every": "10s"}
    )
    session = await lifecycle.wake("alice", "test")
    clock.advance(5 * MINUTE)
    assert await controller.tick() == []
    assert controller.evaluation_errors >= 1
    assert session.state is State.AWAKE
    assert controller.next_due("alice") == clock.monotonic() + 10


async def test_cpu_and_memory_come_from_the_provider(make_world: MakeWorld) -> None:
    """A rule on memory_bytes reads the real backend's memory through the provider."""
    lifecycle, controller, clock = await make_world(
        {"sleep_when": "memory_bytes > 1000000 && cpu_percent >= 0.0 && inflight == 0"}
    )
    await lifecycle.wake("alice", "test")
    assert controller.next_due("alice") == clock.monotonic()  # fetched at the check
    assert await controller.tick() == ["alice"]
    await controller.close()
    reason = await _stop_reason(lifecycle)
    assert reason.startswith("sleep_when: memory_bytes > 1000000 && cpu_percent >= 0.0")
    assert "[memory_bytes=" in reason


async def test_in_window_follows_the_clock(make_world: MakeWorld) -> None:
    """Kept awake in a window; sleeps right when it closes (FakeClock: Tue 22:13:20Z)."""
    lifecycle, controller, clock = await make_world(
        {
            "sleep_when": "inflight == 0",
            "keep_awake_when": 'in_window("Tue 22:00-23:00", "UTC")',
        }
    )
    await lifecycle.wake("alice", "test")
    start = clock.monotonic()
    closes = 46 * MINUTE + 40  # 22:13:20 -> 23:00:00
    assert controller.next_due("alice") == start + closes
    clock.advance(closes - 0.1)
    assert await controller.tick() == []
    clock.advance(0.1)
    assert await controller.tick() == ["alice"]
