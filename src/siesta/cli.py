"""The `siesta` command: Typer for arguments, Rich for output; no logic of its own."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from siesta import __version__, logconfig, record, replay
from siesta.adminclient import AdminClient, AdminError, NotRunning, read_token
from siesta.config import Config, ConfigError, config_json_schema, load_config
from siesta.core.duration import format_duration, parse_duration
from siesta.core.model import State, Transition
from siesta.core.policy import CLOCK_SIGNALS
from siesta.store import open_store
from siesta.store.base import SessionRecord
from siesta.styles import STATE_STYLE, styled, transition, when

app = typer.Typer(
    name="siesta",
    help="Session-aware scale-to-zero: backends sleep when idle and wake on the next request.",
    no_args_is_help=True,
    rich_markup_mode="markdown",  # paragraphs re-flow to the terminal's width
)
config_app = typer.Typer(help="Validate the config file or print its schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
sessions_app = typer.Typer(
    help="List, create and delete the sessions of a running siesta.", no_args_is_help=True
)
app.add_typer(sessions_app, name="sessions")
policy_app = typer.Typer(
    help="Explain a session's policy now, or replay a recorded trace against the policies.",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")

console = Console()
err = Console(stderr=True)
log = logging.getLogger("siesta")

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The config file.", show_default=True)
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (times in ISO 8601 with their offset).")
]


def _version(asked: bool) -> None:
    if asked:
        from siesta._native import compiled

        hot_path = "compiled hot path" if compiled() else "pure Python"
        console.print(f"siesta {__version__} ({hot_path})", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Session-aware scale-to-zero: backends sleep when idle and wake on the next request."""


def _load(path: Path):  # type: ignore[no-untyped-def]
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


class LogFormat(enum.StrEnum):
    """How `siesta up` writes its log (see `siesta.logconfig`)."""

    text = "text"
    json = "json"


@app.command()
def up(
    config: ConfigOption = Path("siesta.yaml"),
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging, with tracebacks.")
    ] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar=logconfig.FORMAT_ENV,
            help="text (plain lines with ISO times outside a terminal) or json (one "
            "object a line).",
        ),
    ] = LogFormat.text,
) -> None:
    """Run the gateway and the controller until Ctrl-C or SIGTERM."""
    from siesta.app import StartupError, install_uvloop, serve

    conf = _load(config)
    listener = logconfig.start(log_format.value, sys.stderr, verbose)
    install_uvloop()

    def announce(_app: object) -> None:
        gw = conf.gateway
        from siesta._native import compiled

        hot_path = "compiled with mypyc" if compiled() else "pure Python"
        log.info(
            "siesta listening on http://%s (%s routing, %s)",
            gw.listen,
            gw.routing,
            hot_path,
            extra=logconfig.fields(address=gw.listen),
        )

    try:
        asyncio.run(serve(conf, ready=announce))
    except StartupError as exc:
        log.error("%s: %s", conf.path, exc, extra=logconfig.fields(path=str(conf.path)))
        raise typer.Exit(1) from None
    except Exception as exc:
        log.error("siesta stopped: %s", exc, exc_info=exc)  # the traceback with --verbose
        raise typer.Exit(1) from None
    finally:
        listener.stop()


@app.command()
def demo(
    traffic: Annotated[
        bool, typer.Option("--traffic", help="Drive scripted traffic, then print a summary.")
    ] = False,
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    idle: Annotated[str, typer.Option(help="Idle timeout of the demo sessions.")] = "10s",
    state_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(
        ".siesta/demo"
    ),
    admin_port: Annotated[
        int | None,
        typer.Option(
            help="Admin API port (0: off). Default: the gateway's port + 1, or a free one.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Sessions of a bundled demo app (one slow to start), a short idle timeout, a live
    table, and the admin API for the other commands."""
    from siesta.demo.run import run_demo

    code = run_demo(
        console, port=port, idle=idle, state_dir=state_dir, traffic=traffic, admin_port=admin_port
    )
    raise typer.Exit(code)


@app.command()
def status(config: ConfigOption = Path("siesta.yaml"), as_json: JsonOption = False) -> None:
    """Sessions with their state, idle and awake time and next policy check.

    Asks the running siesta (admin API); when it is not running, shows what it last
    stored, and says so.
    """
    conf = _load(config)
    try:
        sessions = _admin_of(conf, timeout=5.0).sessions()
    except NotRunning as exc:
        _status_from_store(conf, str(exc), as_json)
        return
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _print_json({"running": True, "sessions": sessions})
    else:
        console.print(_sessions_table(sessions, labels=False))


def _status_from_store(conf: Config, why: str, as_json: bool) -> None:
    """The table from the state siesta last stored (it is not running)."""
    path = conf.store_path
    if path is not None and not path.exists():
        err.print(f"no state yet at {path}: siesta has not run with this config")
        raise typer.Exit(1)
    try:
        records, last = asyncio.run(_stored(conf))
    except Exception as exc:
        err.print(f"{why}, and its store cannot be read: {exc}")
        raise typer.Exit(1) from None
    now = time.time()
    if as_json:
        _print_json(
            {
                "running": False,
                "why": why,
                "sessions": [_record_json(r, last.get(r.id)) for r in records],
            }
        )
        return
    table = Table(
        "session", "template", "state", "idle for", "awake for", "next policy check", "last event"
    )
    for rec in records:
        event = last.get(rec.id)
        awake = rec.state is State.AWAKE
        table.add_row(
            rec.id,
            rec.template,
            f"[{STATE_STYLE[rec.state]}]{rec.state}[/]",
            format_duration(now - rec.last_seen) if rec.last_seen and awake else "",
            format_duration(now - rec.updated) if rec.updated and awake else "",
            "",
            event.reason if event else "",
        )
    console.print(table)
    err.print(
        f"{why}: this is the state it last stored in {conf.store.identity}; "
        "no policy checks are scheduled while it is not running",
        highlight=False,
        soft_wrap=True,
    )


def _record_json(record: SessionRecord, event: Transition | None) -> dict[str, Any]:
    """A stored session as `status --json` shows it when siesta is not running."""
    return {
        "id": record.id,
        "template": record.template,
        "labels": record.labels,
        "state": record.state.value,
        "pid": record.pid,
        "last_seen": None if not record.last_seen else when(record.last_seen),
        "updated": None if not record.updated else when(record.updated),
        "last_event": None if event is None else event.reason,
    }


async def _stored(conf: Config) -> tuple[list[SessionRecord], dict[str, Transition]]:
    """The stored sessions, and each one's last event."""
    store = open_store(conf.store, conf.instance_id)
    try:
        await store.open()
        records = await store.sessions()
        last = {e.session: e for e in await store.events(limit=100_000)}
    finally:
        await store.close()
    return records, last


@config_app.command("check")
def config_check(
    path: Annotated[
        Path | None,
        typer.Argument(help="The config file (or give it with -c).", show_default=False),
    ] = None,
    config: ConfigOption = Path("siesta.yaml"),
) -> None:
    """Validate a config file; print each problem with its line and key."""
    path = path or config
    conf = _load(path)
    console.print(
        f"[green]ok[/green] {path}: {len(conf.templates)} template(s), "
        f"{len(conf.sessions)} session(s), listening on {conf.gateway.listen}"
    )


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file."""
    console.print_json(json.dumps(config_json_schema()))


# Commands that talk to a running siesta through its admin API -------------------------

SessionArg = Annotated[str, typer.Argument(help="The session id.", show_default=False)]


def _client(config: Path) -> tuple[AdminClient, Config]:
    """A client of the admin API of the siesta that runs with `config`."""
    conf = _load(config)
    try:
        return _admin_of(conf), conf
    except AdminError as exc:
        _fail(exc)


def _admin_of(conf: Config, timeout: float = 10.0) -> AdminClient:
    """A client of the admin API `conf` describes; `NotRunning` when it is off."""
    address = conf.gateway.admin_address
    if address is None:
        raise NotRunning(f"{conf.path}: the admin API is off (gateway.admin_listen: off)")
    return AdminClient(*address, read_token(conf.state_dir), timeout=timeout)


def _fail(exc: AdminError) -> NoReturn:
    """Print the API's error as one line and exit 1."""
    message = str(exc)
    if exc.retry_after is not None:
        message += f" (retry in {exc.retry_after:.0f}s)"
    err.print(f"[red]error[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


_state = styled


@sessions_app.command("list")
def sessions_list(config: ConfigOption = Path("siesta.yaml"), as_json: JsonOption = False) -> None:
    """Sessions of the running siesta, with their state and activity."""
    client, _ = _client(config)
    try:
        sessions = client.sessions()
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _print_json(sessions)
    else:
        console.print(_sessions_table(sessions, labels=True))


def _sessions_table(sessions: list[dict[str, Any]], *, labels: bool) -> Table:
    """Sessions as the admin API lists them: state, idle and awake time, next check."""
    columns = ["session", "template", "state", "idle for", "awake for", "next policy check"]
    failed = any(s.get("failure") for s in sessions)
    table = Table(*columns, *(["labels"] if labels else []), *(["last failure"] if failed else []))
    for s in sessions:
        cells = [
            s["id"],
            s["template"],
            _state(s["state"]),
            *(
                format_duration(s[key]) if s.get(key) is not None else ""
                for key in ("idle_for", "awake_for", "next_check_in")
            ),
        ]
        if labels:
            cells.append(", ".join(f"{k}={v}" for k, v in s["labels"].items()))
        if failed:
            retry = s.get("retry_in")
            later = f" (retry in {format_duration(retry)})" if retry else ""
            cells.append(escape(s.get("failure") or "") + later)
        table.add_row(*cells)
    return table


@sessions_app.command("create")
def sessions_create(
    session: SessionArg,
    template: Annotated[
        str, typer.Option("--template", "-t", help="The template it runs.", show_default=False)
    ],
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="A label, as key=value; repeatable.")
    ] = None,
    config: ConfigOption = Path("siesta.yaml"),
) -> None:
    """Create a session (asleep) from a template; it wakes on its first request."""
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]error[/red] --label {item!r}: write it as key=value", highlight=False)
            raise typer.Exit(2)
        labels[key] = value
    client, _ = _client(config)
    try:
        created = client.create(session, template, labels)
    except AdminError as exc:
        _fail(exc)
    console.print(f"created {created['id']} (template {created['template']}, asleep)")


@sessions_app.command("delete")
def sessions_delete(session: SessionArg, config: ConfigOption = Path("siesta.yaml")) -> None:
    """Stop a session's backend and delete the session (its events are kept)."""
    client, _ = _client(config)
    try:
        client.delete(session)
    except AdminError as exc:
        _fail(exc)
    console.print(f"deleted {session}")


@sessions_app.command("token")
def sessions_token(
    session: SessionArg,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Make a new token; the old one stops working.")
    ] = False,
    config: ConfigOption = Path("siesta.yaml"),
) -> None:
    """Print a session's access token (gateway.auth mode token), made if it has none."""
    client, _ = _client(config)
    try:
        token = client.session_token(session, rotate=rotate)
    except AdminError as exc:
        _fail(exc)
    print(token)


@app.command()
def wake(session: SessionArg, config: ConfigOption = Path("siesta.yaml")) -> None:
    """Wake a session and wait until it is awake, showing its state meanwhile."""
    client, conf = _client(config)
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool, console.status(f"waking {session}") as status:
        waking = pool.submit(client.wake, session, conf.gateway.wake_timeout + 10.0)
        while not waking.done():
            try:
                state = client.session(session)["state"]
            except AdminError:
                state = "?"
            status.update(f"waking {session}: {_state(state)}")
            time.sleep(0.2)
        try:
            woken = waking.result()
        except AdminError as exc:
            _fail(exc)
    took = format_duration(time.monotonic() - began)
    console.print(f"{woken['id']} is {_state(woken['state'])} (took {took})")


@app.command()
def sleep(session: SessionArg, config: ConfigOption = Path("siesta.yaml")) -> None:
    """Put a session to sleep now and wait until its backend stopped."""
    client, conf = _client(config)
    timeout = max((t.stop_grace for t in conf.templates.values()), default=10.0) + 20.0
    with console.status(f"putting {session} to sleep"):
        try:
            slept = client.sleep(session, timeout)
        except AdminError as exc:
            _fail(exc)
    console.print(f"{slept['id']} is {_state(slept['state'])}")


@app.command()
def logs(
    session: SessionArg,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many lines.")] = 100,
    config: ConfigOption = Path("siesta.yaml"),
) -> None:
    """The last lines of a session's backend log (a process's output, a container's log)."""
    client, _ = _client(config)
    try:
        text = client.logs(session, lines)
    except AdminError as exc:
        _fail(exc)
    if text:
        print(text)
    else:
        err.print(f"{session}: no log yet")


@app.command()
def events(
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only this session's events.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")
    ] = False,
    config: ConfigOption = Path("siesta.yaml"),
    as_json: JsonOption = False,
) -> None:
    """Sleeps, wakes and every other transition, oldest first."""
    client, _ = _client(config)
    try:
        past = client.events(session)
        for event in past:
            _print_event(event, as_json)
        if not follow:
            return
        # Everything after the last event listed (or all, when none was): an event that
        # happens while the stream connects is replayed, never lost.
        since = past[-1]["at"] if past else 0.0
        for event in client.stream(session, since=since):
            _print_event(event, as_json)
    except AdminError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        return
    err.print("siesta stopped: no more events")


@policy_app.command("explain")
def policy_explain(
    session: SessionArg, config: ConfigOption = Path("siesta.yaml"), as_json: JsonOption = False
) -> None:
    """Each rule of a session's policy with the signal values it reads, whether it holds,
    and when the session would sleep if nothing but time changed."""
    client, _ = _client(config)
    try:
        answer = client.explain(session)
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _print_json(answer)
    else:
        _print_explanation(answer)


def _print_explanation(answer: dict[str, Any]) -> None:
    console.print(
        f"[bold]{answer['session']}[/bold] (template {answer['template']}) is "
        f"{_state(answer['state'])}; policy [bold]{answer['policy']}[/bold]",
        highlight=False,
    )
    signals = answer.get("signals")
    if signals:
        shown = ", ".join(f"{name}={_signal(name, value)}" for name, value in signals.items())
        console.print(f"signals: {shown}", markup=False, highlight=False, soft_wrap=True)
    table = Table("rule", "condition", "values", "holds", "when it holds")
    for rule in answer["rules"]:
        values = ", ".join(f"{k}={_signal(k, v)}" for k, v in rule["values"].items())
        table.add_row(
            rule["key"],
            escape(rule["source"]),
            escape(values),
            _holds(rule["holds"], rule.get("error")),
            rule["effect"],
        )
    console.print(table)
    decision = answer.get("decision")
    if decision is not None:
        _print_decision(decision)
    if answer.get("note"):
        console.print(answer["note"], markup=False, highlight=False, soft_wrap=True)


def _print_decision(decision: dict[str, Any]) -> None:
    verdict = "[red]sleep now[/red]" if decision["sleep"] else "[green]stay awake[/green]"
    reason = escape(decision["reason"])
    console.print(f"decision: {verdict} ({reason})", highlight=False, soft_wrap=True)
    if decision["sleep_in"] is not None and not decision["sleep"]:
        at = when(decision["sleep_at"])
        fires = f"would sleep in {format_duration(decision['sleep_in'])} (at {at})"
        console.print(f"next: {fires} if nothing but time changes", highlight=False)
    elif not decision["sleep"]:
        console.print(
            "next: no sleep foreseen from time alone; it takes a change of the signals",
            highlight=False,
        )
    if decision["warn_in"] is not None and not decision["sleep"]:
        console.print(f"warning in {format_duration(decision['warn_in'])}", highlight=False)
    if decision["next_check_in"] is not None:
        check = f"next policy check in {format_duration(decision['next_check_in'])}"
        if decision["check_every"] is not None:
            check += f" (re-checked every {format_duration(decision['check_every'])})"
        console.print(check, highlight=False)


def _signal(name: str, value: Any) -> str:
    if name in CLOCK_SIGNALS and isinstance(value, int | float):
        return format_duration(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_signal(k, v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _holds(holds: bool | None, error: str | None) -> str:
    if error:
        return f"[red]error[/red]: {escape(error)}"
    if holds is None:
        return "-"
    return "[bold]yes[/bold]" if holds else "no"


@policy_app.command(
    "replay",
    help="Replay a recorded activity trace against the policies "
    "of a config, at full speed, and report per session: awake hours against "
    "always-on, sleeps, wakes and false sleeps.\n\n" + replay.TRACE_HELP,
)
def policy_replay(
    trace: Annotated[
        Path, typer.Option("--trace", "-t", help="The trace (CSV).", show_default=False)
    ],
    config: ConfigOption = Path("siesta.yaml"),
    wake_time: Annotated[
        str, typer.Option("--wake-time", help="How long a wake takes (a duration, e.g. 2s).")
    ] = "0s",
    timeline: Annotated[
        bool, typer.Option("--timeline", help="Also print every sleep and wake with its reason.")
    ] = False,
) -> None:
    conf = _load(config)
    try:
        wake_seconds = parse_duration(wake_time)
        rows = replay.read_trace(trace)
        report = replay.replay(rows, replay.setups_from(conf), wake_seconds=wake_seconds)
    except (replay.TraceError, ValueError) as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    _print_replay(report, timeline)


@policy_app.command("record")
def policy_record(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="The trace to write (CSV); appended to.", show_default=False
        ),
    ],
    config: ConfigOption = Path("siesta.yaml"),
    every: Annotated[
        str, typer.Option("--every", help="How often siesta is asked (a duration).")
    ] = "1s",
    duration: Annotated[
        str | None,
        typer.Option("--for", help="Stop after this long (a duration); else at Ctrl-C."),
    ] = None,
) -> None:
    """Record a running siesta's signals (requests, bytes, connections, cpu, probe maps)
    as a trace that `siesta policy replay` reads: replay a real day of your sessions
    against a new policy before deploying it."""
    client, _ = _client(config)
    try:
        period = parse_duration(every)
        until = None if duration is None else time.monotonic() + parse_duration(duration)
    except ValueError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    recorder = record.Recorder()
    written, sessions = 0, set[str]()
    fresh = not out.exists() or out.stat().st_size == 0
    try:
        with open(out, "a", encoding="utf-8") as trace:
            if fresh:
                trace.write(record.HEADER)
            while until is None or time.monotonic() < until:
                began = time.monotonic()
                query = "" if recorder.started else "?all=true"
                rows = recorder.rows(client.request("GET", "/api/signals" + query))
                trace.write(record.format_rows(rows))
                trace.flush()
                written += len(rows)
                sessions.update(row[1] for row in rows)
                time.sleep(max(0.0, period - (time.monotonic() - began)))
    except AdminError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass
    err.print(f"recorded {written} rows of {len(sessions)} sessions to {out}", highlight=False)


def _print_replay(report: replay.Report, timeline: bool) -> None:
    start = datetime.fromtimestamp(report.start, UTC).isoformat(timespec="seconds")
    end = datetime.fromtimestamp(report.end, UTC).isoformat(timespec="seconds")
    span = format_duration(report.end - report.start)
    console.print(
        f"replayed {start} to {end} ({span}), wakes taking {format_duration(report.wake_seconds)}",
        highlight=False,
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("session", "policy", "awake h of"):
        table.add_column(name, no_wrap=True)
    for name in ("saved", "sleeps", "wakes", "false", "window"):
        table.add_column(name, justify="right", min_width=len(name))
    for s in report.sessions:
        table.add_row(
            s.session,
            s.policy,
            f"{s.awake_seconds / 3600:.2f} of {s.always_on_seconds / 3600:.2f}",
            f"{s.saved_fraction:.0%}",
            str(s.sleeps),
            str(s.wakes),
            str(s.false_sleeps),
            format_duration(s.thrash_window),
        )
    console.print(table)
    console.print(replay.FALSE_SLEEP, markup=False, highlight=False)
    for s in report.sessions:
        if s.evaluation_errors:
            err.print(
                f"{s.session}: {s.evaluation_errors} check(s) failed to run (kept awake)",
                highlight=False,
            )
        if timeline:
            console.print(f"\n[bold]{s.session}[/bold]")
            for change in s.changes:
                console.print(replay.describe(change), markup=False, highlight=False)


# What sleeping saved: `siesta report` and `siesta advise` (logic in siesta.savings) ---


TraceOption = Annotated[
    Path | None,
    typer.Option(
        "--trace",
        "-t",
        help="Report on a recorded trace replayed against the policies "
        "(see `siesta policy replay`) instead of the store.",
    ),
]


def _snapshot(conf: Config, trace: Path | None, wake_time: str, timeline: str) -> Any:
    from siesta.savings import offline

    try:
        if trace is not None:
            return offline.from_trace(conf, trace, parse_duration(wake_time))
        return offline.from_store(conf, parse_duration(timeline))
    except offline.NoData as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def report(
    config: ConfigOption = Path("siesta.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write an HTML report with charts here.")
    ] = None,
    timeline: Annotated[
        str, typer.Option(help="How far back the HTML's awake timeline goes (a duration).")
    ] = "24h",
    trace: TraceOption = None,
    wake_time: Annotated[
        str, typer.Option("--wake-time", help="With --trace: how long a wake takes.")
    ] = "0s",
) -> None:
    """What sleeping saved, per session and per template: awake share, wakes, wake time
    p50/p95, and $ and kg CO2e saved against always-on (read from the store, so it
    works whether siesta runs or not)."""
    from siesta.savings import charts, costing
    from siesta.savings import html as html_report
    from siesta.savings import report as reporting

    conf = _load(config)
    snap = _snapshot(conf, trace, wake_time, timeline)
    built = reporting.build(
        snap.accounts, conf.savings, costing.model_of(conf), snap.end, snap.active
    )
    if html is not None:
        try:
            drawn = charts.all_charts(built, snap.spans, snap.start, snap.end)
        except charts.ChartsUnavailable as exc:
            err.print(f"[red]error[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        html.write_text(html_report.render(built, drawn), encoding="utf-8")
        err.print(f"wrote {html}", highlight=False)
    if as_json:
        print(json.dumps(reporting.to_json(built), indent=2))
    else:
        console.print(reporting.render(built))


@app.command()
def advise(
    config: ConfigOption = Path("siesta.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the advice as JSON.")] = False,
    trace: TraceOption = None,
) -> None:
    """Where each template's sessions would emit least and cost least (the candidate
    regions of savings.regions), and which hours of the day suit its work, with the
    expected $ and kg CO2e per month."""
    from siesta.savings import advise as advising
    from siesta.savings import costing

    conf = _load(config)
    snap = _snapshot(conf, trace, "0s", "0s")
    regions = conf.savings.candidates()
    factors = {name: conf.savings.price_factor(name) for name in regions}
    found = advising.advise(snap.accounts, costing.model_of(conf), regions, factors)
    if as_json:
        print(json.dumps(advising.to_json(found, regions), indent=2))
    else:
        console.print(advising.render(found))


def _print_event(event: dict[str, Any], as_json: bool = False) -> None:
    if as_json:  # one object a line, --follow included
        _print_json({**event, "time": when(event["at"])})
        return
    took = f" (woke in {event['wake_seconds']:.2f}s)" if event.get("wake_seconds") else ""
    console.print(
        f"{when(event['at'])} {event['session']} {transition(event['old'], event['new'])}"
        f"  {escape(event['reason'])}{took}",
        highlight=False,
        soft_wrap=True,
    )


def _print_json(value: Any) -> None:
    """`value` as JSON on stdout, one line, for scripts (no colours, no wrapping)."""
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    app()
