"""Benchmark the controller at rest: 100,000 registered sessions, 10,000 of them awake.

The claim (issue 3): the controller evaluates only sessions that are due, so
100,000 registered sessions with 10,000 awake keep it under 5% of one core at rest.

What runs is real: a `Lifecycle` on a `ThreadedSqlite` store in a temp dir, the policy
compiled by `Config`, and the `Controller`'s own `run()` loop on the real clock
(uvloop, and the garbage-collector tuning `siesta.app` applies after start-up).
Only the provider is a stand-in (`StandInProvider`): it starts no process. Starting
10,000 real backends is not the point; the controller's cost is. Sessions are
therefore marked awake the way `Lifecycle._run_wake` does it, minus the provider's
start and the readiness poll (`simulate_wake`): ASLEEP -> WAKING -> AWAKE, each move
checked, handed to the store's write-behind queue with its event and announced to the lifecycle's
listeners (the controller's among them, which schedules the session's first check),
with an endpoint, `awake_since` and `activity.last_activity` set before AWAKE.

The population, chosen so that checks come due at a steady rate from the start:

* 100,000 sessions registered (ASLEEP), two labels each; 10,000 picked at random are awake.
* The policy: sleep_when `idle_for > duration("15m") && connections == 0 && inflight == 0`,
  min_awake 2m, check_every 30s (the default). It reads no signal that changes by itself,
  so an idle session is checked once, exactly when it can first sleep.
* 90% of the awake sessions: last activity spread evenly over the last 15 minutes, so
  about 9,000 / 900 s = 10 of them reach 15 minutes of idleness every second.
* 10% hold an open, silent connection (a browser tab's websocket). While it is open the
  rule cannot become true: their first check (at 15 minutes of idleness, spread over the
  first 30 s) finds the connection and asks the gateway to say when it closes
  (`Activity.watch`); they are not polled. Each second, CLOSED_PER_SECOND of those
  connections close the way the gateway closes them (`Activity.fell()`), which brings
  that session's check at once.
* Awake since: up to 4 hours before their last activity.
* Traffic, every second: 0.2% of the awake sessions (20) see a request (the gateway's
  writes: last_activity, requests, bytes), which turns their coming check into a
  re-schedule instead of a sleep; and CLOSED_PER_SECOND watched connections close.
  Sessions the controller put to sleep are replaced by requests waking sleeping ones
  (`simulate_wake`), so 10,000 stay awake throughout.

Measured over the run phase only, for CONTROLLER_BENCH_SECONDS (default 30), after a 5 s
warm-up that is not measured either (the checks that came due while the 10,000 wakes
were being set up are done then): the process CPU time (user + system, all of this
process: the controller's loop, its checks, the sleeps it starts through the lifecycle
and their store writes), minus the CPU of the simulated traffic and wakes (the
controller's listener calls inside a simulated wake stay counted as the controller's).
The verdict uses the controller's share; the whole-process figure is printed too. Each
check (`Controller._check`: signals, policy, re-schedule or sleep) and each policy
evaluation (`Policy.evaluate`, including the prediction of the next check) is timed where
it happens, cold (a few dozen a second, between other work); after the run, every awake
session is also evaluated back to back (warm caches), the figure a busier controller
sees. RSS is read before the sessions are registered and after setup; the sessions are
generated one at a time as the lifecycle reads them, so the bench holds no copy.

Printed, and written to bench/out/controller.json. The target is informational, as
in bench/run.py: a MISS does not fail the run.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil

from siesta.app import ACTIVITY_FLUSH_EVERY, Siesta, _tune_gc, install_uvloop
from siesta.config import Config
from siesta.controller import Controller
from siesta.core.lifecycle import check_transition
from siesta.core.model import Endpoint, Session, State, Transition
from siesta.core.policy import Decision, Policy, Signals
from siesta.lifecycle import Lifecycle
from siesta.providers.base import BackendStatus, ExitHandler, RunningBackend
from siesta.store.base import SessionRecord
from siesta.store.sqlite import ThreadedSqlite
from siesta.store.writer import Recorder

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

REGISTERED = 100_000
AWAKE = 10_000
TEMPLATE = "web"
SLEEP_WHEN = 'idle_for > duration("15m") && connections == 0 && inflight == 0'
IDLE_THRESHOLD = 15 * 60.0  # seconds: the duration in SLEEP_WHEN
MIN_AWAKE = "2m"
CHECK_EVERY = 30.0  # seconds: the policy's check_every (the default)
CONNECTED_FRACTION = 0.10  # awake sessions holding an open, silent connection
AWAKE_BEFORE_ACTIVITY = 4 * 3600.0  # seconds: awake_since is up to this before last activity
TOUCHED_PER_SECOND = 0.002  # fraction of awake sessions that see a request each second
CLOSED_PER_SECOND = 2  # watched connections that close each second
REQUEST_BYTES = 2_048
HOST = "127.0.0.1"
SEED = 3
TARGET_CPU_PERCENT = 5.0
TARGET_EVALUATION_US = 20.0
TARGET_BYTES_PER_SESSION = 1024
WARMUP_SECONDS = 5.0  # run before measuring: the checks that came due during setup are done
FLUSHES_TIMED = 5  # runs of siesta.app's activity flush timed after the run


# -- the stand-in provider ------------------------------------------------------------


class StandInProvider:
    """Stands in for a real provider: starts no process, stops nothing.

    Wakes are simulated (`simulate_wake`), so `start` is never called; `stop` (called
    by the lifecycle when the controller puts a session to sleep) returns at once.
    """

    def __init__(self) -> None:
        self.stops = 0
        self.statuses = 0

    def set_exit_handler(self, handler: ExitHandler) -> None:
        pass  # a stand-in backend never exits on its own

    async def start(self, session: str, template: str) -> RunningBackend:
        raise AssertionError("the stand-in provider starts nothing: wakes are simulated")

    async def stop(self, session: str, grace: float) -> None:
        self.stops += 1

    def alive(self, session: str) -> bool:
        return True

    async def status(self, session: str) -> BackendStatus:
        self.statuses += 1
        return BackendStatus(running=True)

    async def adopt(self, candidates: list[RunningBackend]) -> list[RunningBackend]:
        return []

    async def close(self) -> None:
        pass


# -- simulated wakes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    """A session as `Lifecycle.start` takes it: template and labels."""

    template: str
    labels: dict[str, str]


class Population(Mapping[str, Spec]):
    """The sessions to register, made one at a time as `Lifecycle.start` reads them, so
    the bench holds no copy of its own (which the memory figure would count)."""

    TIERS = ("gold", "silver", "bronze")

    def __init__(self, count: int) -> None:
        self._count = count

    def __getitem__(self, sid: str) -> Spec:
        i = int(sid[1:])
        return Spec(TEMPLATE, {"team": f"team-{i % 250}", "tier": self.TIERS[i % 3]})

    def __iter__(self) -> Iterator[str]:
        return (f"s{i:06d}" for i in range(self._count))

    def __len__(self) -> int:
        return self._count


class Listened:
    """CPU seconds spent in the lifecycle's listeners (the controller's, chiefly)."""

    def __init__(self) -> None:
        self.cpu = 0.0


def simulate_wake(
    lifecycle: Lifecycle,
    store: Recorder,
    session: Session,
    reason: str,
    *,
    awake_since: float,
    last_activity: float,
    port: int,
    listened: Listened,
) -> None:
    """What `Lifecycle._run_wake` does, without the provider's start and the readiness poll.

    `awake_since` and `last_activity` (monotonic) are set before the move to AWAKE, as
    `_mark_awake_now` does, but may lie in the past: the session woke earlier.
    """
    _move(lifecycle, store, session, State.WAKING, reason, listened)
    session.endpoint, session.pid, session.pid_started = Endpoint(HOST, port), None, None
    _save(store, session)  # the lifecycle writes the endpoint before waiting for readiness
    session.failures = 0
    session.awake_since = awake_since
    session.activity.last_activity = last_activity
    _move(lifecycle, store, session, State.AWAKE, reason, listened, wake_seconds=0.0)


def _move(
    lifecycle: Lifecycle,
    store: Recorder,
    session: Session,
    new: State,
    reason: str,
    listened: Listened,
    wake_seconds: float | None = None,
) -> None:
    """`Lifecycle._move`: check, change, record with its event, notify the listeners."""
    old = session.state
    check_transition(old, new)
    session.state = new
    event = Transition(session.id, time.time(), old, new, reason, wake_seconds)
    _save(store, session, event)
    for observer in lifecycle.observers:
        observer(event)
    began = time.process_time()
    for listener in lifecycle.listeners:
        listener(session, old, new)
    listened.cpu += time.process_time() - began


def _save(store: Recorder, session: Session, event: Transition | None = None) -> None:
    """`Lifecycle._save`: the session's row, and its event, to the write-behind queue."""
    record = SessionRecord.of(session, time.time())
    store.record(record, event)


class AwakeSet:
    """The awake sessions, kept by a lifecycle listener (as the gateway keeps one too),
    in a list for cheap random picks."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._index: dict[str, int] = {}

    def on_transition(self, session: Session, old: State, new: State) -> None:
        if new is State.AWAKE:
            self._index[session.id] = len(self.ids)
            self.ids.append(session.id)
        elif old is State.AWAKE:
            at = self._index.pop(session.id)
            last = self.ids.pop()
            if last != session.id:
                self.ids[at] = last
                self._index[last] = at

    def __len__(self) -> int:
        return len(self.ids)


# -- instruments ------------------------------------------------------------------------


@dataclass
class Timings:
    """Durations (ns) of the controller's checks and of policy evaluations."""

    checks: list[int] = field(default_factory=list)
    check_sleeps: list[int] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)
    ticks: int = 0
    empty_ticks: int = 0  # woke up and found nothing due
    tick_cpu: float = 0.0  # CPU seconds inside tick(); the rest is the loop and sleeps
    recording: bool = False


def instrument(controller: Controller, policy: Policy, timings: Timings) -> None:
    """Time each check and each evaluation (a few hundred ns of overhead per call)."""
    check: Callable[[str, float, BackendStatus | None], bool] = controller._check
    evaluate: Callable[[Signals], Decision] = policy.evaluate
    tick = controller.tick
    clock = time.perf_counter_ns

    def timed_check(sid: str, now: float, status: BackendStatus | None) -> bool:
        began = clock()
        slept = check(sid, now, status)
        if timings.recording:
            (timings.check_sleeps if slept else timings.checks).append(clock() - began)
        return slept

    def timed_evaluate(signals: Signals) -> Decision:
        began = clock()
        decision = evaluate(signals)
        if timings.recording:
            timings.evaluations.append(clock() - began)
        return decision

    async def counted_tick() -> list[str]:
        if not timings.recording:
            return await tick()
        checks = len(timings.checks) + len(timings.check_sleeps)
        began = time.process_time()
        slept = await tick()  # awaits only the provider's status, which this policy skips
        timings.tick_cpu += time.process_time() - began
        timings.ticks += 1
        if len(timings.checks) + len(timings.check_sleeps) == checks:
            timings.empty_ticks += 1
        return slept

    controller._check = timed_check  # type: ignore[method-assign]
    policy.evaluate = timed_evaluate  # type: ignore[method-assign]
    controller.tick = counted_tick  # type: ignore[method-assign]


def warm_evaluations(
    controller: Controller, lifecycle: Lifecycle, policy: Policy, awake: AwakeSet
) -> list[int]:
    """Each awake session's policy evaluated back to back on its current signals (ns)."""
    clock = time.perf_counter_ns
    now = time.monotonic()
    evaluate = Policy.evaluate  # the class's, not the timed wrapper `instrument` put on it
    durations = []
    for sid in awake.ids:
        signals = controller._signals(lifecycle.sessions[sid], policy, now, None)
        began = clock()
        evaluate(policy, signals)
        durations.append(clock() - began)
    return durations


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def percentile(values: list[int], fraction: float) -> float:
    """The `fraction` quantile (nearest rank) of `values`, in µs."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000


# -- the benchmark ----------------------------------------------------------------------


def seconds_from_env() -> float:
    text = os.environ.get("CONTROLLER_BENCH_SECONDS", "").strip()
    if not text:
        return 30.0
    try:
        value = float(text)
    except ValueError:
        sys.exit(f"bench: CONTROLLER_BENCH_SECONDS={text!r} is not a number")
    if value <= 0:
        sys.exit("bench: CONTROLLER_BENCH_SECONDS must be more than 0")
    return value


def make_config(tmp: Path) -> Config:
    return Config.model_validate(
        {
            "store": str(tmp / "state" / "state.db"),
            # never run: the stand-in provider starts nothing
            "templates": {TEMPLATE: {"command": ["/bin/false"], "policy": "default"}},
            "policies": {
                "default": {
                    "sleep_when": SLEEP_WHEN,
                    "min_awake": MIN_AWAKE,
                    "check_every": f"{CHECK_EVERY:g}s",
                }
            },
        }
    )


class Traffic:
    """Each second: requests to a few awake sessions, and wakes replacing the sleeps."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        store: Recorder,
        awake: AwakeSet,
        ids: list[str],
        rng: random.Random,
        listened: Listened,
    ) -> None:
        self.lifecycle, self.store, self.awake, self.ids = lifecycle, store, awake, ids
        self.rng, self.listened = rng, listened
        self.cpu = 0.0  # CPU seconds of the simulation itself, listeners excluded
        self.connected: list[str] = []  # sessions holding a silent connection, to close
        self.closed_watched = 0
        self.requests = 0
        self.wakes = 0
        self.seconds = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        per_second = round(TOUCHED_PER_SECOND * AWAKE)
        while True:
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            began, listened = time.process_time(), self.listened.cpu
            self.step(per_second)
            self.cpu += (time.process_time() - began) - (self.listened.cpu - listened)

    def step(self, per_second: int) -> None:
        now = time.monotonic()
        sessions = self.lifecycle.sessions
        for sid in self.rng.sample(self.awake.ids, min(per_second, len(self.awake))):
            activity = sessions[sid].activity
            activity.last_activity = now
            activity.requests += 1
            activity.bytes += REQUEST_BYTES
            self.requests += 1
        for _ in range(CLOSED_PER_SECOND):
            while self.connected:
                activity = sessions[self.connected.pop()].activity
                if activity.connections:  # still awake and connected: the gateway's close
                    activity.connections -= 1
                    if activity.watch is not None:
                        activity.fell()
                        self.closed_watched += 1
                    break
        while len(self.awake) < AWAKE:
            session = sessions[self.rng.choice(self.ids)]
            if session.state is not State.ASLEEP:
                continue
            simulate_wake(
                self.lifecycle,
                self.store,
                session,
                "request GET /",
                awake_since=now,
                last_activity=now,
                port=20_000 + self.wakes % 40_000,
                listened=self.listened,
            )
            session.activity.requests += 1
            self.wakes += 1
        self.seconds += 1


async def bench(seconds: float, tmp: Path) -> dict[str, Any]:
    rng = random.Random(SEED)
    config = make_config(tmp)
    gc.collect()
    rss_before = rss()

    # -- setup: register, restore, wake 10,000 -------------------------------------
    began = time.perf_counter()
    provider = StandInProvider()
    lifecycle = Lifecycle(config.templates, ThreadedSqlite(config.store_path), provider)
    store = lifecycle.recorder
    await lifecycle.start(Population(REGISTERED))
    ids = list(lifecycle.sessions)  # the sessions' own id strings: nothing extra is held
    registered_in = time.perf_counter() - began
    controller = Controller(lifecycle, config.template_policies(), provider=provider)
    awake = AwakeSet()
    lifecycle.listeners.append(awake.on_transition)
    listened = Listened()

    began = time.perf_counter()
    chosen = rng.sample(ids, AWAKE)
    connected = chosen[: round(CONNECTED_FRACTION * AWAKE)]
    now = time.monotonic()
    for i, sid in enumerate(chosen):
        if i < len(connected):  # first check (15 min idle) spread over one check_every
            last = now - IDLE_THRESHOLD + rng.uniform(0.0, CHECK_EVERY)
        else:
            last = now - rng.uniform(0.0, IDLE_THRESHOLD)
        simulate_wake(
            lifecycle,
            store,
            lifecycle.sessions[sid],
            "request GET /",
            awake_since=last - rng.uniform(0.0, AWAKE_BEFORE_ACTIVITY),
            last_activity=last,
            port=20_000 + i,
            listened=listened,
        )
    for sid in connected:  # the page's websocket opens after the wake; silent since
        lifecycle.sessions[sid].activity.connections = 1
    woken_in = time.perf_counter() - began
    assert len(awake) == AWAKE
    assert all(controller.next_due(sid) is not None for sid in chosen)
    _tune_gc()  # as siesta.app does once started
    rss_after = rss()

    # -- run phase: a warm-up, then the measured N seconds -------------------------
    policy = config.template_policies()[TEMPLATE]
    timings = Timings()
    instrument(controller, policy, timings)
    traffic = Traffic(lifecycle, store, awake, ids, rng, listened)
    traffic.connected = list(connected)
    rng.shuffle(traffic.connected)
    tasks = [
        asyncio.create_task(controller.run(), name="controller"),
        asyncio.create_task(traffic.run(), name="traffic"),
    ]
    await asyncio.sleep(WARMUP_SECONDS)
    stops0, heap0, requests0, wakes0, closed0 = (
        provider.stops,
        len(controller._heap),
        traffic.requests,
        traffic.wakes,
        traffic.closed_watched,
    )
    timings.recording = True
    sim0, wall0, cpu0, (user0, sys0) = (
        traffic.cpu,
        time.perf_counter(),
        time.process_time(),
        cpu_seconds(),
    )
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    user1, sys1 = cpu_seconds()
    timings.recording = False
    simulated = traffic.cpu - sim0
    sleeps, heap_after = provider.stops - stops0, len(controller._heap)
    requests, wakes = traffic.requests - requests0, traffic.wakes - wakes0
    closed = traffic.closed_watched - closed0
    watched = sum(1 for sid in awake.ids if controller.watching(sid))
    for task in tasks:
        if task.done():
            raise RuntimeError(f"the {task.get_name()} task ended") from task.exception()
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await controller.close()
    warm = warm_evaluations(controller, lifecycle, policy, awake)

    # -- outside the controller: siesta.app's activity flush over the same sessions -----
    flush = SimpleNamespace(lifecycle=lifecycle, store=store, _flushed={})
    flush_times = []
    for _ in range(FLUSHES_TIMED):
        began = time.process_time()
        Siesta._write_activity(flush)  # type: ignore[arg-type]
        flush_times.append(time.process_time() - began)
    await lifecycle.recorder.flush(60.0)
    await lifecycle.store.close()

    controller_cpu = cpu - simulated
    checks = len(timings.checks) + len(timings.check_sleeps)
    all_checks = timings.checks + timings.check_sleeps
    return {
        "settings": {
            "seconds": seconds,
            "warmup_seconds": WARMUP_SECONDS,
            "registered": REGISTERED,
            "awake": AWAKE,
            "sleep_when": SLEEP_WHEN,
            "min_awake": MIN_AWAKE,
            "check_every": CHECK_EVERY,
            "connected_fraction": CONNECTED_FRACTION,
            "touched_per_second": TOUCHED_PER_SECOND,
            "seed": SEED,
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "event_loop": type(asyncio.get_running_loop()).__module__,
        },
        "setup": {"register_seconds": registered_in, "wake_seconds": woken_in},
        "run": {
            "wall_seconds": wall,
            "process_cpu_seconds": cpu,
            "user_seconds": user1 - user0,
            "system_seconds": sys1 - sys0,
            "simulation_cpu_seconds": simulated,
            "controller_cpu_seconds": controller_cpu,
            "process_cpu_percent": 100 * cpu / wall,
            "controller_cpu_percent": 100 * controller_cpu / wall,
            "ticks": timings.ticks,
            "empty_ticks": timings.empty_ticks,
            "tick_cpu_seconds": timings.tick_cpu,
            "checks": checks,
            "checks_per_second": checks / wall,
            "evaluations": len(timings.evaluations),
            "evaluations_per_second": len(timings.evaluations) / wall,
            "sleeps": sleeps,
            "requests": requests,
            "wakes": wakes,
            "watched_connections_closed": closed,
            "watched_at_end": watched,
            "awake_at_end": len(awake),
            "heap_entries_before": heap0,
            "heap_entries_after": heap_after,
        },
        "timings_us": {
            "check_p50": percentile(all_checks, 0.50),
            "check_p99": percentile(all_checks, 0.99),
            "check_kept_awake_p50": percentile(timings.checks, 0.50),
            "check_kept_awake_p99": percentile(timings.checks, 0.99),
            "check_put_to_sleep_p50": percentile(timings.check_sleeps, 0.50),
            "check_put_to_sleep_p99": percentile(timings.check_sleeps, 0.99),
            "evaluation_p50": percentile(timings.evaluations, 0.50),
            "evaluation_p99": percentile(timings.evaluations, 0.99),
            "evaluation_mean": statistics.fmean(timings.evaluations) / 1000
            if timings.evaluations
            else float("nan"),
            "evaluation_warm_p50": percentile(warm, 0.50),
            "evaluation_warm_p99": percentile(warm, 0.99),
        },
        "memory": {
            "rss_before_bytes": rss_before,
            "rss_after_setup_bytes": rss_after,
            "rss_for_sessions_bytes": rss_after - rss_before,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        },
        "activity_flush": {
            "every_seconds": ACTIVITY_FLUSH_EVERY,
            "cpu_ms_median": 1000 * statistics.median(flush_times),
            "cpu_percent": 100 * statistics.median(flush_times) / ACTIVITY_FLUSH_EVERY,
        },
    }


def print_report(r: dict[str, Any]) -> None:
    s, run, t, mem, setup = r["settings"], r["run"], r["timings_us"], r["memory"], r["setup"]
    mib = 1024 * 1024
    verdict = "PASS" if run["controller_cpu_percent"] < TARGET_CPU_PERCENT else "MISS"
    print()
    print(
        f"Controller at rest: {s['registered']:,} sessions registered, {s['awake']:,} awake, "
        f"{run['wall_seconds']:.1f}s on the real clock ({r['machine']['event_loop']}, "
        f"{r['machine']['cpus']} CPUs, load {r['machine']['load_average'][0]:.2f})"
    )
    print(
        f"  policy: {s['sleep_when']}  min_awake {s['min_awake']}, "
        f"check_every {s['check_every']:g}s"
    )
    print(
        f"  not measured: registered in {setup['register_seconds']:.1f}s, "
        f"{s['awake']:,} woken (simulated) in {setup['wake_seconds']:.1f}s, "
        f"then a {s['warmup_seconds']:g}s warm-up"
    )
    print(
        f"  controller CPU  {run['controller_cpu_percent']:6.2f}% of one core   "
        f"target < {TARGET_CPU_PERCENT:g}%  {verdict}"
    )
    print(
        f"    inside tick() {100 * run['tick_cpu_seconds'] / run['wall_seconds']:6.2f}%   "
        "(the rest: the loop's wake-ups and timers, the sleeps' tasks)"
    )
    print(
        f"  whole process   {run['process_cpu_percent']:6.2f}% of one core   "
        f"(user {run['user_seconds']:.2f}s, system {run['system_seconds']:.2f}s; "
        f"simulated traffic and wakes {run['simulation_cpu_seconds']:.3f}s excluded above)"
    )
    print(
        f"  checks          {run['checks_per_second']:8.1f}/s  ({run['checks']:,} in "
        f"{run['ticks']:,} ticks, {run['empty_ticks']:,} of them with nothing due; "
        f"{run['sleeps']:,} put to sleep)"
    )
    print(
        f"  evaluations     {run['evaluations_per_second']:8.1f}/s  (Policy.evaluate, incl. "
        f"first checks of {run['wakes']:,} simulated wakes)"
    )
    print(
        f"  check time      p50 {t['check_p50']:7.1f} µs   p99 {t['check_p99']:7.1f} µs   "
        f"(kept awake p50 {t['check_kept_awake_p50']:.1f}, put to sleep p50 "
        f"{t['check_put_to_sleep_p50']:.1f} µs)"
    )
    print(
        f"  evaluation time p50 {t['evaluation_p50']:7.1f} µs   p99 {t['evaluation_p99']:7.1f} µs"
        f"   (where they happen, cold; target p50 < {TARGET_EVALUATION_US:g} µs)"
    )
    print(
        f"    back to back  p50 {t['evaluation_warm_p50']:7.1f} µs   "
        f"p99 {t['evaluation_warm_p99']:7.1f} µs   (every awake session, warm)"
    )
    print(
        f"  watched         {run['watched_at_end']:,} sessions wait for their connections "
        f"to close (no timer); {run['watched_connections_closed']:,} closed and were checked"
    )
    print(
        f"  traffic         {run['requests']:,} requests, {run['wakes']:,} wakes; "
        f"{run['awake_at_end']:,} awake at the end; timer heap "
        f"{run['heap_entries_before']:,} -> {run['heap_entries_after']:,} entries"
    )
    print(
        f"  memory          RSS {mem['rss_after_setup_bytes'] / mib:.0f} MiB after setup, "
        f"{mem['rss_for_sessions_bytes'] / mib:.0f} MiB for the sessions "
        f"({mem['rss_for_sessions_bytes'] / s['registered']:,.0f} B each, target "
        f"< {TARGET_BYTES_PER_SESSION:,} B), peak {mem['max_rss_bytes'] / mib:.0f} MiB"
    )
    flush = r["activity_flush"]
    print(
        f"  not the controller: siesta.app's activity flush (every {flush['every_seconds']:g}s, "
        f"awake sessions with new traffic) {flush['cpu_ms_median']:.1f} ms CPU each = "
        f"{flush['cpu_percent']:.2f}% of one core"
    )


def main() -> int:
    seconds = seconds_from_env()
    install_uvloop()
    tmp = Path(tempfile.mkdtemp(prefix="siesta-bench-controller-"))
    try:
        print(
            f"controller bench: {REGISTERED:,} sessions, {AWAKE:,} awake, {seconds:g}s "
            "(CONTROLLER_BENCH_SECONDS)"
        )
        report = asyncio.run(bench(seconds, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "controller.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {(OUT / 'controller.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
