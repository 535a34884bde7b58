"""Replaying a recorded activity trace against the policies, on a simulated clock.

Used by `siesta policy replay`: it reads a CSV trace (`read_trace`), plays it at full
speed through a model of each session's state machine, and reports per session how
long it was awake against always-on, how often it slept and woke, and how many of
those sleeps were false (thrash). No sockets, no processes, no real clock: the
trace's own timestamps are the clock.

Replay and production agree because replay runs production's decision code: the
signals are built by `siesta.signals.read_signals` from the same `Session` model, the
decision is `Policy.evaluate`, and checks are scheduled the way the controller
schedules them (at the decision's `next_check`, activity never moving a check
forward, except a disconnect when the decision asked to watch the connections, as
the gateway tells the controller). A sleep therefore lands exactly where siesta
would have put it.

The model, kept simple on purpose:

- every session starts asleep at the trace's first row and is followed to its last;
- `request` or `connect` to a session that is asleep wakes it: the backend runs from
  that moment, and is awake (requests served, checks start) `wake_seconds` later;
- stopping is instant; a sleep closes the session's connections, so a later
  `disconnect` of one of them is ignored;
- `cpu` and `app` samples hold until the next sample, whatever the state;
- at equal times, trace rows come first (in file order), then wakes, then checks.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from siesta.config import Config
from siesta.core.model import Session, State
from siesta.core.policy import EvaluationError, Policy
from siesta.signals import RateWindow, Window, read_signals

EVENTS = ("request", "bytes", "connect", "disconnect", "cpu", "app")
"""The kinds of trace rows."""

TRACE_HELP = """\
The trace is CSV with the columns time,session,event,value (a header row with
those names is optional; blank lines and lines starting with # are skipped):

    time     ISO 8601 (2026-03-02T09:15:00+01:00; no offset
             means UTC), or seconds since the epoch
    session  a session under `sessions:` in the config (it
             names the template, hence the policy)
    event    request     one request (value: bytes moved,
                         optional); wakes the session if asleep
             bytes       bytes moved without a new request
                         (value: how many), e.g. websocket
                         messages: activity, but no wake
             connect     a connection opens, e.g. a websocket;
                         wakes it if asleep
             disconnect  a connection closes
             cpu         the backend's cpu_percent from now on
                         (value: a number)
             app         the activity probe's `app` map from now
                         on (value: a JSON object, quoted as CSV
                         quotes: "{""busy_kernels"": 1}")

Rows need not be sorted. Every session is followed from the trace's first row to its
last (that span is its always-on time) and starts asleep.
"""

MIN_DELAY = 0.001  # seconds: as the controller, a check is never re-scheduled for now
_RATE_SIGNALS = frozenset({"requests_1m", "bytes_1m"})
_HEADER = ("time", "session", "event", "value")

# Heap priorities at equal times: trace rows, then wakes completing, then checks.
_ROW, _READY, _CHECK = 0, 1, 2


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the line."""


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One row of a trace: at `at` (seconds since the epoch), `event` for `session`."""

    at: float
    session: str
    event: str
    value: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """A sleep or a wake in the replay; `false` marks a wake that made a false sleep."""

    at: float
    what: str  # "wake" or "sleep"
    reason: str
    false: bool = False


@dataclass(frozen=True, slots=True)
class SessionReport:
    """What replaying one session gave.

    `false_sleeps` counts sleeps followed by a wake less than `thrash_window` seconds
    later. `evaluation_errors` counts checks whose rules failed to run (kept awake).
    """

    session: str
    template: str
    policy: str
    awake_seconds: float
    always_on_seconds: float
    sleeps: int
    wakes: int
    false_sleeps: int
    thrash_window: float
    evaluation_errors: int = 0
    changes: tuple[Change, ...] = ()

    @property
    def saved_fraction(self) -> float:
        """The share of the always-on time it slept."""
        if self.always_on_seconds <= 0:
            return 0.0
        return 1.0 - self.awake_seconds / self.always_on_seconds


@dataclass(frozen=True, slots=True)
class Report:
    """A whole replay: the span of the trace and each session's report, by id."""

    start: float
    end: float
    wake_seconds: float
    sessions: tuple[SessionReport, ...]

    def session(self, session_id: str) -> SessionReport:
        """The report of one session; `KeyError` if the trace did not mention it."""
        for report in self.sessions:
            if report.session == session_id:
                return report
        raise KeyError(session_id)


@dataclass(frozen=True, slots=True)
class SessionSetup:
    """How one session of the trace is replayed: its template, policy and labels."""

    template: str
    policy: Policy
    thrash_window: float
    labels: Mapping[str, str] = field(default_factory=dict)


# Reading a trace ----------------------------------------------------------------------


def read_trace(path: Path) -> list[TraceEvent]:
    """The rows of the trace file at `path`, sorted by time (file order at equal times)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    return parse_trace(text, source=str(path))


def parse_trace(text: str, source: str = "<trace>") -> list[TraceEvent]:
    """The rows of a CSV trace (see `TRACE_HELP`), sorted by time."""
    rows: list[TraceEvent] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader(io.StringIO(line), skipinitialspace=True))
        if not rows and tuple(f.strip().lower() for f in fields[:4]) == _HEADER[: len(fields)]:
            continue
        rows.append(_row(fields, f"{source}:{number}", number))
    if not rows:
        raise TraceError(f"{source}: no rows: write time,session,event,value lines")
    rows.sort(key=lambda row: row.at)
    return rows


def _row(fields: list[str], where: str, number: int) -> TraceEvent:
    if not 3 <= len(fields) <= 4:
        raise TraceError(f"{where}: expected time,session,event[,value], got {len(fields)} fields")
    when, session, event = (f.strip() for f in fields[:3])
    value = fields[3].strip() if len(fields) == 4 else ""
    if not session:
        raise TraceError(f"{where}: the session is empty")
    if event not in EVENTS:
        raise TraceError(f"{where}: unknown event {event!r}: one of {', '.join(EVENTS)}")
    _check_value(event, value, where)
    return TraceEvent(_time(when, where), session, event, value, number)


def _time(text: str, where: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise TraceError(f"{where}: time {text!r} is not finite")
        return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TraceError(
            f"{where}: time {text!r} is neither ISO 8601 (2026-03-02T09:15:00+01:00) "
            "nor seconds since the epoch"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _check_value(event: str, value: str, where: str) -> None:
    if event in ("request", "bytes") and value and not (value.isdigit()):
        raise TraceError(f"{where}: a {event} row's value is the bytes moved, a whole number")
    if event == "cpu":
        try:
            cpu = float(value)
        except ValueError:
            raise TraceError(f"{where}: cpu needs a number (percent), got {value!r}") from None
        if not math.isfinite(cpu) or cpu < 0:
            raise TraceError(f"{where}: cpu must be 0 or more, got {value!r}")
    if event == "app":
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise TraceError(f"{where}: app needs a JSON object: {exc}") from None
        if not isinstance(parsed, dict):
            raise TraceError(f"{where}: app needs a JSON object, got {value!r}")


# The simulation -----------------------------------------------------------------------


class _Sim:
    """One session during a replay: the production `Session` model plus the tallies."""

    def __init__(self, sid: str, setup: SessionSetup, start: float):
        self.setup = setup
        self.session = Session(sid, setup.template, dict(setup.labels), created=start)
        self.cpu = 0.0
        self.app: Mapping[str, Any] = {}
        self.window: RateWindow | None = None
        self.check_at: float | None = None
        self.watch = False  # the last check asked to hear when connections fall
        self.running_since: float | None = None
        self.last_sleep: float | None = None
        self.awake_seconds = 0.0
        self.sleeps = self.wakes = self.false_sleeps = self.errors = 0
        self.changes: list[Change] = []

    def report(self, end: float, span: float) -> SessionReport:
        awake = self.awake_seconds
        if self.running_since is not None:
            awake += end - self.running_since
        s = self.setup
        return SessionReport(
            self.session.id,
            s.template,
            s.policy.name,
            awake,
            span,
            self.sleeps,
            self.wakes,
            self.false_sleeps,
            s.thrash_window,
            self.errors,
            tuple(self.changes),
        )


class _Replay:
    """The event loop of one replay: trace rows, wakes completing and checks, in order."""

    def __init__(self, setups: Mapping[str, SessionSetup], start: float, wake_seconds: float):
        self.setups = setups
        self.start = start
        self.wake_seconds = wake_seconds
        self.sims: dict[str, _Sim] = {}
        self.heap: list[tuple[float, int, int, str, TraceEvent | None]] = []
        self.seq = 0

    def push(self, at: float, kind: int, sid: str, row: TraceEvent | None = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, sid, row))

    def run(self, rows: list[TraceEvent], end: float) -> None:
        for given in rows:
            self.sim(given.session)
            self.push(given.at, _ROW, given.session, given)
        while self.heap and self.heap[0][0] <= end:
            at, kind, _, sid, row = heapq.heappop(self.heap)
            sim = self.sims[sid]
            if row is not None:
                self.on_row(sim, row)
            elif kind == _READY:
                self.on_ready(sim, at)
            elif sim.check_at == at:
                self.on_check(sim, at)

    def sim(self, sid: str) -> _Sim:
        if sid not in self.sims:
            self.sims[sid] = _Sim(sid, self.setups[sid], self.start)
        return self.sims[sid]

    # -- trace rows -----------------------------------------------------------

    def on_row(self, sim: _Sim, row: TraceEvent) -> None:
        session, at = sim.session, row.at
        activity = session.activity
        if row.event in ("request", "connect") and session.state is State.ASLEEP:
            self.wake(sim, at, f"{row.event} (line {row.line})")
        awake = session.state is State.AWAKE
        if row.event == "request":
            activity.requests += 1
            activity.bytes += int(row.value or 0)
            if awake:
                activity.last_activity = at
        elif row.event == "bytes":
            activity.bytes += int(row.value or 0)
            if awake:
                activity.last_activity = at
        elif row.event == "connect":
            activity.connections += 1
            if awake:
                activity.last_activity = at
        elif row.event == "disconnect":
            if activity.connections > 0:
                activity.connections -= 1
                if awake:
                    activity.last_activity = at
                if awake and sim.watch:  # the gateway's `Activity.fell`
                    sim.watch = False
                    self.schedule(sim, at)
        elif row.event == "cpu":
            sim.cpu = float(row.value)
        else:
            sim.app = json.loads(row.value)

    # -- state changes --------------------------------------------------------

    def wake(self, sim: _Sim, at: float, why: str) -> None:
        sim.session.state = State.WAKING
        sim.running_since = at
        sim.wakes += 1
        false = sim.last_sleep is not None and at - sim.last_sleep < sim.setup.thrash_window
        sim.false_sleeps += false
        sim.changes.append(Change(at, "wake", why, false))
        self.push(at + self.wake_seconds, _READY, sim.session.id)

    def on_ready(self, sim: _Sim, at: float) -> None:
        session = sim.session
        session.state = State.AWAKE
        session.awake_since = at
        session.activity.last_activity = at  # the held requests are served now
        sim.window = RateWindow(at, session.activity.requests, session.activity.bytes)
        self.schedule(sim, at)

    def schedule(self, sim: _Sim, at: float) -> None:
        sim.check_at = at
        if at != math.inf:
            self.push(at, _CHECK, sim.session.id)

    def on_check(self, sim: _Sim, at: float) -> None:
        session, policy = sim.session, sim.setup.policy
        rates = (0, 0)
        if sim.window is not None and policy.variables & _RATE_SIGNALS:
            rates = sim.window.sample(at, session.activity.requests, session.activity.bytes)
        window = Window(cpu_percent=sim.cpu, memory_bytes=0)
        signals = read_signals(
            session, monotonic=at, wall=at, rates=rates, window=window, app=sim.app
        )
        try:
            decision = policy.evaluate(signals)
        except EvaluationError:
            sim.errors += 1
            self.schedule(sim, at + policy.check_every)
            return
        if decision.sleep:
            self.sleep(sim, at, decision.reason)
        else:
            sim.watch = decision.watch
            self.schedule(sim, max(decision.next_check, at + MIN_DELAY))

    def sleep(self, sim: _Sim, at: float, reason: str) -> None:
        session = sim.session
        session.state = State.ASLEEP
        session.awake_since = None
        session.activity.connections = 0
        session.activity.inflight = 0
        assert sim.running_since is not None
        sim.awake_seconds += at - sim.running_since
        sim.running_since = None
        sim.check_at = None
        sim.watch = False
        sim.window = None
        sim.sleeps += 1
        sim.last_sleep = at
        sim.changes.append(Change(at, "sleep", reason))


def replay(
    rows: list[TraceEvent],
    setups: Mapping[str, SessionSetup],
    *,
    wake_seconds: float = 0.0,
) -> Report:
    """Replay `rows` (sorted by time) for the sessions in `setups`.

    `TraceError` if a row names a session `setups` lacks, or `wake_seconds` is negative.
    """
    if not rows:
        raise TraceError("the trace has no rows")
    if wake_seconds < 0 or not math.isfinite(wake_seconds):
        raise TraceError("the wake time must be 0s or more")
    for row in rows:
        if row.session not in setups:
            raise TraceError(
                f"line {row.line}: session {row.session!r} is not under `sessions:` in the "
                "config (its template gives its policy)"
            )
    start, end = rows[0].at, rows[-1].at
    loop = _Replay(setups, start, wake_seconds)
    loop.run(rows, end)
    span = end - start
    reports = tuple(loop.sims[sid].report(end, span) for sid in sorted(loop.sims))
    return Report(start, end, wake_seconds, reports)


def setups_from(config: Config, sessions: Iterable[str] | None = None) -> dict[str, SessionSetup]:
    """Each configured session's template, policy, labels and thrash window.

    The thrash window is the policy's `min_awake`, or the template's `idle_timeout`
    when the policy sets none.
    """
    setups: dict[str, SessionSetup] = {}
    wanted = set(sessions) if sessions is not None else None
    for sid, conf in config.sessions.items():
        if wanted is not None and sid not in wanted:
            continue
        policy = config.policy_for(conf.template)
        template = config.templates[conf.template]
        window = policy.min_awake if policy.min_awake > 0 else template.idle_timeout
        setups[sid] = SessionSetup(conf.template, policy, window, dict(conf.labels))
    return setups


FALSE_SLEEP = (
    "false: the false sleeps (thrash), each a sleep followed by a wake (a request or a "
    "connect) less than the session's window later; the window is the policy's "
    "min_awake, or the template's idle_timeout when the policy has no min_awake"
)
"""The definition the report prints."""


def describe(change: Change) -> str:
    """A sleep or wake as one line of the timeline."""
    when = datetime.fromtimestamp(change.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    mark = " (after a false sleep)" if change.false else ""
    return f"{when} {change.what:<5} {change.reason}{mark}"
