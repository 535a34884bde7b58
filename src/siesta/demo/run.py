"""`siesta demo`: three sessions of the bundled demo app behind a live gateway.

Called by the `demo` command of `siesta.cli` (what `make demo` runs): a newcomer's
first look at siesta. It builds the config in code, runs siesta with
`siesta.app.serve` and shows a live table of the sessions. With `--traffic` it
drives a scripted scenario through the gateway (with httpx), then prints what the
store recorded: wakes, wake times and the backend time saved against keeping every
backend always on.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from siesta.app import AlreadyRunning, Siesta, StartupError, install_uvloop, serve
from siesta.config import Config, load_config
from siesta.core.duration import format_duration, parse_duration
from siesta.core.model import Session, State, Transition
from siesta.httpclient import async_client
from siesta.store.sqlite import SqliteStore
from siesta.styles import styled, transition, when

HOST = "127.0.0.1"
TEMPLATE = "demo"
SESSIONS = {"alice": "gold", "bob": "silver", "carol": "bronze"}
"""The demo's sessions and their `tier` label."""

SLOW = "dave"
"""A session whose app takes SLOW_START seconds to start: its wake shows the waiting page
(not in the scripted traffic, whose summary is about the others)."""
SLOW_TEMPLATE = "slow-demo"
SLOW_START = 4.0  # seconds: well past the gateway's waiting_page_after (1s)

STOP_GRACE = 3.0  # seconds: the demo app exits at once on SIGTERM
REFRESH_EVERY = 0.25  # seconds between two frames of the live table
RECENT_EVENTS = 6  # transitions shown under the live table
REQUEST_TIMEOUT = 30.0  # seconds: a cold request waits for its session to wake
SLEEP_SLACK = 5.0  # seconds past idle timeout and stop grace before a late sleep is a problem
POLL_EVERY = 0.05  # seconds between two looks at the sessions' states

ROUNDS: tuple[dict[str, int], ...] = (
    {"alice": 5, "bob": 3, "carol": 1},
    {"alice": 5},
    {"alice": 5, "bob": 3},
)
"""Requests per session in each round: alice is busy, bob comes back once, carol visits once."""

GAP = 0.03
"""Time between two requests of a burst, as a share of the idle timeout."""

PAUSE = 0.2
"""Time everyone stays asleep between two rounds, as a share of the idle timeout."""

PATHS = ("/", "/api/info")
"""The paths a burst asks for in turn: the page, then what the page's backend says of itself."""

RUNNING = frozenset({State.WAKING, State.AWAKE, State.STOPPING})
"""States in which a backend process exists and costs resources."""


err = Console(stderr=True)


# --- entry point ------------------------------------------------------------------------


def run_demo(
    console: Console,
    *,
    port: int,
    idle: str,
    state_dir: Path,
    traffic: bool,
    admin_port: int | None = None,
) -> int:
    """Run the demo until Ctrl-C (or, with `traffic`, until the scenario ends); the exit code.

    The admin API listens on `admin_port` (0: off), by default the gateway's port + 1, or
    a free port when that one is taken."""
    try:
        idle_timeout = _idle_seconds(idle)
    except ValueError as exc:
        return _fail(f"--idle: {exc}", code=2)
    problem = port_problem(port)
    if problem is None and admin_port:
        problem = port_problem(admin_port, option="--admin-port")
    if problem is not None:
        return _fail(problem)
    if admin_port is None:
        admin_port = port + 1 if port < 65535 and port_problem(port + 1) is None else _free_port()
    config = demo_config(port, idle_timeout, state_dir, admin_port=admin_port, slow=not traffic)
    demo = Demo(console, config, traffic)
    install_uvloop()
    try:
        asyncio.run(serve(demo.config, ready=demo.ready))
    except AlreadyRunning as exc:
        return _fail(f"{exc}: stop it first, or pick another folder with --state-dir")
    except StartupError as exc:
        cause = exc.__cause__
        if str(exc).startswith("gateway.listen") and isinstance(cause, OSError):
            return _fail(_listen_error(port, cause))
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return demo.finish()


def _idle_seconds(idle: str) -> float:
    seconds = parse_duration(idle)
    if seconds <= 0:
        raise ValueError(f"{idle!r} is too short: use e.g. 1s or 10s")
    return seconds


def _fail(message: str, code: int = 1) -> int:
    err.print(f"[red]error[/red] {message}", highlight=False, soft_wrap=True)
    return code


def demo_config(
    port: int, idle: float, state_dir: Path, *, admin_port: int | None = None, slow: bool = False
) -> Config:
    """The demo's config, written to <state_dir>/siesta.yaml (so that `siesta status -c`
    and the other commands can reach the demo through its admin API) and loaded."""
    app = [sys.executable, "-m", "siesta.demo", "--port", "{port}", "--session", "{session}"]
    template = {"command": app, "ready": {"http": "/healthz"}, "idle_timeout": idle}
    templates: dict[str, Any] = {TEMPLATE: {**template, "stop_grace": STOP_GRACE}}
    sessions: dict[str, Any] = {
        sid: {"template": TEMPLATE, "labels": {"tier": tier}} for sid, tier in SESSIONS.items()
    }
    if slow:
        command = [*app, "--start-delay", str(SLOW_START)]
        templates[SLOW_TEMPLATE] = {**templates[TEMPLATE], "command": command}
        sessions[SLOW] = {"template": SLOW_TEMPLATE, "labels": {"tier": "slow start"}}
    folder = state_dir.expanduser().absolute()
    config = {
        "gateway": {
            "listen": f"{HOST}:{port}",
            "admin_listen": f"{HOST}:{admin_port}" if admin_port else "off",
            "waiting_page": "auto",
            "wake_rate": "off",  # the scripted traffic is one client waking sessions in rounds
        },
        "store": str(folder / "state.db"),
        "templates": templates,
        "sessions": sessions,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "siesta.yaml"
    path.write_text("# written by `siesta demo`\n" + yaml.safe_dump(config, sort_keys=False))
    return load_config(path)


def demo_sessions(config: Config) -> list[str]:
    """The sessions the demo shows, in order."""
    return [sid for sid in (*SESSIONS, SLOW) if sid in config.sessions]


# --- the gateway's port -----------------------------------------------------------------


def port_problem(port: int, option: str = "--port") -> str | None:
    """Why siesta could not listen on `port`, in one line; None if it can."""
    if not 1 <= port <= 65535:
        return f"port {port} is out of range: pick one from 1024 to 65535 with {option}"
    try:
        _try_bind(port)
    except OSError as exc:
        return _listen_error(port, exc, option)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _try_bind(port: int) -> None:
    """Bind as the gateway does (SO_REUSEADDR); `OSError` if it would fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))


def _listen_error(port: int, exc: OSError, option: str = "--port") -> str:
    if exc.errno == errno.EADDRINUSE:
        hint = _hint(port, option)
        return f"port {port} on {HOST} is already in use: pick another with {option}{hint}"
    if exc.errno == errno.EACCES:
        return f"port {port} needs privileges: pick one above 1023 with {option}"
    return f"cannot start the demo on {HOST}:{port}: {exc.strerror or exc}"


def _hint(port: int, option: str) -> str:
    """The hint ", e.g. --port N" for a nearby port that is free right now, or nothing."""
    for candidate in range(port + 1, min(port + 50, 65536)):
        try:
            _try_bind(candidate)
        except OSError:
            continue
        return f", e.g. {option} {candidate}"
    return ""


# --- the run ----------------------------------------------------------------------------


@dataclass
class Demo:
    """One run of the demo: what siesta calls once it listens, and what is left after."""

    console: Console
    config: Config
    traffic: bool
    started: float = 0.0  # wall clock, when siesta was ready
    ended: float = 0.0  # wall clock, when the scenario ended
    initial: dict[str, State] = field(default_factory=dict)
    script: Script | None = None

    @property
    def _store_path(self) -> Path:
        path = self.config.store_path
        assert path is not None  # the demo's store is SQLite
        return path

    @property
    def idle(self) -> float:
        """The sessions' idle timeout, in seconds."""
        return self.config.templates[TEMPLATE].idle_timeout

    def ready(self, app: Siesta) -> Awaitable[None]:
        """Called by `serve` once siesta listens: introduce, then watch (and drive traffic)."""
        self.started = time.time()
        sessions = app.lifecycle.sessions
        self.initial = {sid: sessions[sid].state for sid in SESSIONS if sid in sessions}
        _introduce(self.console, self.config, self.traffic)
        return self._watch(app)

    async def _watch(self, app: Siesta) -> None:
        view = SessionsView(app, self.idle, self.started)
        live = Live(get_renderable=view.render, console=self.console, auto_refresh=False)
        refresher = asyncio.create_task(_refresh(live), name="demo live table")
        try:
            with live:
                await self._drive(app, view)
        finally:
            refresher.cancel()
            self.ended = self.ended or time.time()
            if not self.console.is_terminal:
                self.console.line()  # Live ends its last frame with a newline on terminals only
            self.console.print("[dim]stopping siesta and every backend…[/dim]")

    async def _drive(self, app: Siesta, view: SessionsView) -> None:
        if self.traffic:
            self.script = Script(app, view, self.idle)
            await self.script.run()
            self.ended = time.time()
        else:
            view.status = f"idle timeout {format_duration(self.idle)} · Ctrl-C to stop"
            await asyncio.Event().wait()  # until serve() cancels us on Ctrl-C or SIGTERM

    def finish(self) -> int:
        """After siesta stopped: the summary (with traffic) and the exit code."""
        leftover = _running_backends(self._store_path)
        for line in leftover:
            self.console.print(f"[red]still running[/red] {line}")
        if self.script is None:
            if not leftover:
                self.console.print("siesta stopped; no backend is left running.")
            return 1 if leftover else 0
        return self._report(leftover)

    def _report(self, leftover: list[str]) -> int:
        assert self.script is not None
        events = _read_events(self._store_path, self.started)
        rows = [
            summarize(sid, events, self.script.replies, self.started, self.ended, state)
            for sid, state in self.initial.items()
        ]
        print_summary(self.console, rows, self.script, self.ended - self.started)
        if not self.script.finished:
            self.console.print("[yellow]interrupted[/yellow] before the scenario finished")
            return 130
        return 1 if self.script.problems() or leftover else 0


async def _refresh(live: Live) -> None:
    """Redraw the live table a few times a second, in the event loop that owns the data."""
    while True:
        live.refresh()
        await asyncio.sleep(REFRESH_EVERY)


def _running_backends(store_path: Path) -> list[str]:
    """Sessions the store still sees with a backend process, after siesta stopped."""
    store = SqliteStore(store_path)
    try:
        return [f"{r.id}: pid {r.pid}" for r in store.sessions() if r.pid is not None]
    finally:
        store.close()


def _read_events(store_path: Path, since: float) -> list[Transition]:
    store = SqliteStore(store_path)
    try:
        return store.events(since=since, limit=1_000_000)
    finally:
        store.close()


# --- what the newcomer sees first -------------------------------------------------------


def _introduce(console: Console, config: Config, traffic: bool) -> None:
    idle = config.templates[TEMPLATE].idle_timeout
    shown = demo_sessions(config)
    console.print(
        f"\n[bold]siesta demo[/bold]: {len(shown)} sessions of a small demo app, "
        "each with its own backend process, behind one gateway.\n"
    )
    base = f"http://{config.gateway.listen}"
    for sid in shown:
        tier = config.sessions[sid].labels.get("tier", "")
        console.print(f"  {sid:<6} [dim]{tier:<10}[/dim] {base}/s/{sid}/", highlight=False)
    console.print()
    console.print(_scenario_text(idle) if traffic else _explanation(idle), highlight=False)
    if SLOW in shown:
        console.print(
            f"{SLOW}'s app takes {format_duration(SLOW_START)} to start: open it to see the "
            "waiting page, which turns into the app by itself.",
            highlight=False,
        )
    if config.gateway.admin_listen is not None:
        path = config.path
        console.print(
            f"Admin API: http://{config.gateway.admin_listen}/docs (its token is in "
            f"{config.state_dir / 'admin-token'}). Try, in another terminal: "
            f"[bold]siesta status -c {path}[/bold], or "
            f"[bold]siesta policy explain alice -c {path}[/bold].",
            highlight=False,
        )
    console.print(f"[dim]state and backend logs: {config.state_dir}[/dim]\n", highlight=False)


def _explanation(idle: float) -> str:
    wait = format_duration(idle)
    return (
        "Every session starts asleep: no process runs for it. Open a URL above and siesta "
        "starts that session's backend, holding your request until it is ready. Leave the "
        f"page alone for {wait} and the session falls asleep: its process is stopped and "
        "gives its memory back. Reload to wake it; the page-load counter starts again at 1, "
        "because it is a new process. Press Ctrl-C to stop; siesta stops every backend on "
        "its way out."
    )


def _scenario_text(idle: float) -> str:
    return (
        f"Scripted traffic: {len(ROUNDS)} rounds of requests through the gateway, each "
        f"followed by quiet until the sessions fall asleep (idle timeout "
        f"{format_duration(idle)}). alice is busy every round, bob comes back in the last "
        f"round, carol visits once. About {format_duration(round(scenario_seconds(idle)))}, "
        "then a summary."
    )


def scenario_seconds(idle: float, wake: float = 0.5) -> float:
    """A rough length of the scripted scenario: per round, a burst, the idle wait, a wake."""
    bursts = sum((max(r.values()) - 1) * GAP * idle for r in ROUNDS)
    return bursts + len(ROUNDS) * (idle + wake) + (len(ROUNDS) - 1) * PAUSE * idle


# --- the live table ---------------------------------------------------------------------


class SessionsView:
    """The live view: the sessions as siesta holds them, recent transitions, a status line."""

    def __init__(self, app: Siesta, idle: float, since: float):
        self.app = app
        self.idle = idle
        self.since = since
        self.status = ""
        self.recent: deque[Transition] = deque(maxlen=RECENT_EVENTS)
        app.lifecycle.observers.append(self.recent.append)  # memory: the loop never reads disk

    def render(self) -> Group:
        """One frame."""
        known = self.app.lifecycle.sessions
        sessions = [known[sid] for sid in (*SESSIONS, SLOW) if sid in known]
        recent = list(self.recent)
        now = time.monotonic()
        return Group(
            sessions_table(sessions, now, self.idle),
            Text(""),
            events_table(recent),
            Text(self.status, style="bold"),
        )


def sessions_table(sessions: Sequence[Session], now: float, idle: float) -> Table:
    """Each session's state, idle and awake times, connections and backend pid."""
    table = Table(
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        show_edge=False,
        caption=f"asleep after {format_duration(idle)} without traffic",
        caption_justify="left",
    )
    for name in ("session", "state", "idle for", "awake for"):
        table.add_column(name, no_wrap=True)
    for name in ("conns", "in flight", "requests", "pid"):
        table.add_column(name, justify="right", no_wrap=True)
    for session in sessions:
        table.add_row(*_session_cells(session, now))
    return table


def _session_cells(session: Session, now: float) -> list[str]:
    activity = session.activity
    awake = session.state is State.AWAKE
    idle_for = format_duration(now - activity.last_activity) if awake else ""
    awake_for = format_duration(now - session.awake_since) if session.awake_since else ""
    return [
        session.id,
        styled(session.state.value),
        idle_for,
        awake_for,
        str(activity.connections),
        str(activity.inflight),
        str(activity.requests),
        str(session.pid or ""),
    ]


def events_table(events: Sequence[Transition]) -> Table:
    """The latest transitions, one a line: when, who, the move and why."""
    table = Table.grid(padding=(0, 1))
    if not events:
        table.add_row("[dim]no transitions yet: open a URL above to wake a session[/dim]")
    for event in events:
        table.add_row(
            f"[dim]{when(event.at)}[/dim]",
            event.session,
            transition(event.old.value, event.new.value),
            f"[dim]{_why(event)}[/dim]",
        )
    return table


def _why(event: Transition) -> str:
    if event.wake_seconds is not None:
        return f"ready in {event.wake_seconds * 1000:.0f} ms"
    if event.old is State.STOPPING and event.new is State.ASLEEP:
        return "backend stopped"
    return event.reason


# --- scripted traffic -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What one GET through the gateway got: status 0 when no answer came."""

    session: str
    path: str
    status: int
    seconds: float
    wake: str = ""  # the gateway's X-Siesta-Wake: "cold" if the request waited for a wake
    detail: str = ""  # the start of the body of a failed answer, or what went wrong

    def describe(self) -> str:
        """One line for the list of failures."""
        outcome = f"HTTP {self.status}" if self.status else "no answer"
        detail = f": {self.detail}" if self.detail else ""
        return f"GET /s/{self.session}{self.path} -> {outcome} after {self.seconds:.1f}s{detail}"


class Script:
    """The scripted scenario: bursts of requests, then quiet until the sessions sleep."""

    def __init__(self, app: Siesta, view: SessionsView, idle: float):
        assert app.address is not None
        host, port = app.address
        self.base = f"http://{host}:{port}"
        self.sessions = app.lifecycle.sessions
        self.view = view
        self.idle = idle
        self.replies: list[Reply] = []
        self.late: list[str] = []  # sessions that did not fall asleep in time
        self.finished = False
        self.http = async_client(REQUEST_TIMEOUT, keepalive=False)  # each request: a visitor

    def problems(self) -> list[str]:
        """Every failed request and late sleep, one line each."""
        failed = [r.describe() for r in self.replies if r.status != 200]
        return failed + [f"{sid} did not fall asleep in time" for sid in self.late]

    async def run(self) -> None:
        """Play every round."""
        async with self.http:
            await self._rounds()

    async def _rounds(self) -> None:
        for number, burst in enumerate(ROUNDS, 1):
            step = f"round {number} of {len(ROUNDS)}"
            if number > 1:
                self.view.status = f"{step} starts in {format_duration(PAUSE * self.idle)}"
                await asyncio.sleep(PAUSE * self.idle)
            self.view.status = f"{step}: requests to {_names(burst)}"
            await asyncio.gather(*(self._burst(sid, count) for sid, count in burst.items()))
            await self._until_asleep(step, list(burst))
        self.view.status = "scenario done"
        self.finished = True

    async def _burst(self, session: str, count: int) -> None:
        for index in range(count):
            if index:
                await asyncio.sleep(GAP * self.idle)
            path = PATHS[index % len(PATHS)]
            self.replies.append(await fetch(self.http, self.base, session, path))

    async def _until_asleep(self, step: str, names: list[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle + STOP_GRACE + SLEEP_SLACK
        while awake := [sid for sid in names if self.sessions[sid].state is not State.ASLEEP]:
            if loop.time() > deadline:
                self.late.extend(awake)
                return
            self.view.status = f"{step}: quiet until {_names(awake)} fall{_s(awake)} asleep"
            await asyncio.sleep(POLL_EVERY)


def _names(names: Sequence[str] | dict[str, int]) -> str:
    items = list(names)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _s(names: Sequence[str]) -> str:
    return "s" if len(names) == 1 else ""


# --- requests through the gateway -------------------------------------------------------


async def fetch(client: httpx.AsyncClient, base: str, session: str, path: str) -> Reply:
    """GET /s/<session><path> through the gateway; never raises."""
    began = time.monotonic()
    try:
        response = await client.get(f"{base}/s/{session}{path}")
    except httpx.TimeoutException:
        return Reply(session, path, 0, time.monotonic() - began, detail="timed out")
    except httpx.HTTPError as exc:
        return Reply(session, path, 0, time.monotonic() - began, detail=str(exc) or repr(exc))
    status = response.status_code
    detail = "" if status == 200 else response.content[:120].decode(errors="replace").strip()
    wake = response.headers.get("x-siesta-wake", "")
    return Reply(session, path, status, time.monotonic() - began, wake, detail)


# --- the summary ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One session over the scenario, from the store's events and the replies."""

    session: str
    requests: int
    wakes: int
    sleeps: int
    wake_seconds: tuple[float, ...]
    awake: float  # seconds with a backend process (waking, awake or stopping)
    always_on: float  # seconds an always-on backend would have run: the whole scenario

    @property
    def saved(self) -> float:
        """The share of an always-on backend's time that was not spent."""
        return 1.0 - self.awake / self.always_on if self.always_on > 0 else 0.0


def summarize(
    session: str,
    events: Sequence[Transition],
    replies: Sequence[Reply],
    start: float,
    end: float,
    initial: State,
) -> SessionSummary:
    """`session` between wall-clock `start` and `end`, given its state at `start`."""
    mine = [e for e in events if e.session == session and e.at <= end]
    wakes = [e.wake_seconds for e in mine if e.new is State.AWAKE and e.wake_seconds is not None]
    return SessionSummary(
        session=session,
        requests=sum(1 for r in replies if r.session == session),
        wakes=len(wakes),
        sleeps=sum(1 for e in mine if e.old is State.STOPPING and e.new is State.ASLEEP),
        wake_seconds=tuple(wakes),
        awake=running_seconds(mine, start, end, initial),
        always_on=max(0.0, end - start),
    )


def running_seconds(
    events: Sequence[Transition], start: float, end: float, initial: State
) -> float:
    """Seconds between `start` and `end` spent in a state with a backend process."""
    total, state, since = 0.0, initial, start
    for event in sorted(events, key=lambda e: e.at):
        at = min(max(event.at, start), end)
        if state in RUNNING:
            total += at - since
        state, since = event.new, at
    if state in RUNNING:
        total += end - since
    return total


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (`share` from 0 to 1); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


def print_summary(
    console: Console, rows: Sequence[SessionSummary], script: Script, seconds: float
) -> None:
    """The summary table, the cold and warm request times, and any failure."""
    console.print()
    console.print(summary_table(rows, seconds))
    console.print(_latency_line(script.replies), highlight=False)
    problems = script.problems()
    if not problems:
        console.print(f"[green]ok[/green] all {len(script.replies)} requests answered 200")
        return
    console.print(f"[red]{len(problems)} problem(s)[/red]:")
    for line in problems:
        console.print(f"  {line}", highlight=False, markup=False)


def summary_table(rows: Sequence[SessionSummary], seconds: float) -> Table:
    """Per session and in total: requests, wakes, sleeps, wake times, awake vs always-on."""
    table = Table(
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        show_edge=False,
        title=f"summary of {format_duration(seconds)} of scripted traffic",
        title_justify="left",
        caption="wake: from start to ready. awake: time with a backend process (waking, "
        "awake or stopping). always-on: a backend running the whole time.",
        caption_justify="left",
    )
    table.add_column("session", no_wrap=True)
    for name in ("requests", "wakes", "sleeps", "wake\np50", "wake\np95", "awake", "always\non"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("saved", justify="right", style="bold", no_wrap=True)
    for index, row in enumerate(rows):
        table.add_row(*_summary_cells(row), end_section=index == len(rows) - 1)
    table.add_row(*_summary_cells(_total(rows)), style="bold")
    return table


def _total(rows: Sequence[SessionSummary]) -> SessionSummary:
    return SessionSummary(
        session="total",
        requests=sum(r.requests for r in rows),
        wakes=sum(r.wakes for r in rows),
        sleeps=sum(r.sleeps for r in rows),
        wake_seconds=tuple(w for r in rows for w in r.wake_seconds),
        awake=sum(r.awake for r in rows),
        always_on=sum(r.always_on for r in rows),
    )


def _summary_cells(row: SessionSummary) -> list[str]:
    return [
        row.session,
        str(row.requests),
        str(row.wakes),
        str(row.sleeps),
        _ms(percentile(row.wake_seconds, 0.50)),
        _ms(percentile(row.wake_seconds, 0.95)),
        f"{row.awake:.1f}s",
        f"{row.always_on:.1f}s",
        f"{row.saved:.0%}",
    ]


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.0f} ms"


def _latency_line(replies: Sequence[Reply]) -> str:
    """How long requests took when they found their session asleep, and when awake."""
    cold = [r.seconds for r in replies if r.wake == "cold"]
    warm = [r.seconds for r in replies if r.wake == "warm"]
    return (
        f"requests that woke their session: {len(cold)}, median {_ms(percentile(cold, 0.5))}; "
        f"requests to an awake session: {len(warm)}, median {_ms(percentile(warm, 0.5))}"
    )
