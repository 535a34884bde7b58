"""The `siesta` command: Typer for arguments, Rich for output; no logic of its own."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from siesta.adminclient import AdminClient, AdminError, read_token
from siesta.config import Config, ConfigError, config_json_schema, load_config
from siesta.core.duration import format_duration
from siesta.core.model import State
from siesta.store.sqlite import SqliteStore
from siesta.styles import STATE_STYLE

app = typer.Typer(
    name="siesta",
    help="Session-aware scale-to-zero: backends sleep when idle and wake on the next request.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Validate the config file or print its schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
sessions_app = typer.Typer(
    help="List, create and delete the sessions of a running siesta.", no_args_is_help=True
)
app.add_typer(sessions_app, name="sessions")

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The config file.", show_default=True)
]


def _load(path: Path):  # type: ignore[no-untyped-def]
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _logging(verbose: bool) -> logging.handlers.QueueListener:
    """Log through a queue: records are formatted and written by a thread, so a wake's
    log lines cost the event loop a queue put, not a terminal write."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = RichHandler(console=err, show_path=False, rich_tracebacks=True)
    handler.setFormatter(logging.Formatter("%(message)s", datefmt="%H:%M:%S"))
    queued = logging.handlers.QueueHandler(records)
    queued.setFormatter(logging.Formatter("%(message)s"))  # the default would prefix the level
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[queued])
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    return listener


@app.command()
def up(
    config: ConfigOption = Path("siesta.yaml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the gateway and the controller until Ctrl-C or SIGTERM."""
    from siesta.api import AdminListenError
    from siesta.app import AlreadyRunning, install_uvloop, serve

    conf = _load(config)
    listener = _logging(verbose)
    install_uvloop()

    def announce(app_: object) -> None:
        gw = conf.gateway
        err.print(f"siesta listening on http://{gw.listen} ({gw.routing} routing)")

    try:
        asyncio.run(serve(conf, ready=announce))
    except AlreadyRunning as exc:
        err.print(f"[red]error[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    except AdminListenError as exc:
        err.print(f"[red]error[/red] {conf.path}: {exc.strerror}", soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        where = f"{conf.path}: gateway.listen {conf.gateway.listen}"
        err.print(f"[red]error[/red] {where}: {exc.strerror or exc}", soft_wrap=True)
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
) -> None:
    """Three sessions of a bundled demo app, a short idle timeout and a live table."""
    from siesta.demo.run import run_demo

    raise typer.Exit(run_demo(console, port=port, idle=idle, state_dir=state_dir, traffic=traffic))


@app.command()
def status(config: ConfigOption = Path("siesta.yaml")) -> None:
    """Sessions with their state, idle time and backend, read from the store."""
    conf = _load(config)
    if not conf.store.exists():
        err.print(f"no state yet at {conf.store}: siesta has not run with this config")
        raise typer.Exit(1)
    store = SqliteStore(conf.store)
    try:
        records = store.sessions()
        last = {e.session: e for e in store.events(limit=100000)}
    finally:
        store.close()
    now = time.time()
    table = Table("session", "template", "state", "for", "idle for", "backend", "last event")
    for rec in records:
        event = last.get(rec.id)
        idle = (
            format_duration(now - rec.last_seen)
            if rec.last_seen and rec.state is State.AWAKE
            else ""
        )
        table.add_row(
            rec.id,
            rec.template,
            f"[{STATE_STYLE[rec.state]}]{rec.state}[/]",
            format_duration(now - rec.updated) if rec.updated else "",
            idle,
            f"pid {rec.pid} at {rec.endpoint}" if rec.pid and rec.endpoint else "",
            event.reason if event else "",
        )
    console.print(table)


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="The config file.")]) -> None:
    """Validate a config file; print each problem with its line and key."""
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
    host, port = conf.gateway.admin_address
    try:
        token = read_token(conf.state_dir)
    except AdminError as exc:
        _fail(exc)
    return AdminClient(host, port, token), conf


def _fail(exc: AdminError) -> NoReturn:
    """Print the API's error as one line and exit 1."""
    message = str(exc)
    if exc.retry_after is not None:
        message += f" (retry in {exc.retry_after:.0f}s)"
    err.print(f"[red]error[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _state(state: str) -> str:
    style = STATE_STYLE.get(State(state), "") if state in State.__members__ else ""
    return f"[{style}]{state}[/]" if style else state


@sessions_app.command("list")
def sessions_list(config: ConfigOption = Path("siesta.yaml")) -> None:
    """Sessions of the running siesta, with their state and activity."""
    client, _ = _client(config)
    try:
        sessions = client.sessions()
    except AdminError as exc:
        _fail(exc)
    table = Table("session", "template", "state", "awake for", "idle for", "next check", "labels")
    for s in sessions:
        table.add_row(
            s["id"],
            s["template"],
            _state(s["state"]),
            *(
                format_duration(s[key]) if s.get(key) is not None else ""
                for key in ("awake_for", "idle_for", "next_check_in")
            ),
            ", ".join(f"{k}={v}" for k, v in s["labels"].items()),
        )
    console.print(table)


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
def events(
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only this session's events.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")
    ] = False,
    config: ConfigOption = Path("siesta.yaml"),
) -> None:
    """Sleeps, wakes and every other transition, oldest first."""
    client, _ = _client(config)
    try:
        past = client.events(session)
        for event in past:
            _print_event(event)
        if not follow:
            return
        since = past[-1]["at"] if past else time.time()
        for event in client.stream(session, since=since):
            _print_event(event)
    except AdminError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        return
    err.print("siesta stopped: no more events")


def _print_event(event: dict[str, Any]) -> None:
    when = datetime.fromtimestamp(event["at"]).strftime("%Y-%m-%d %H:%M:%S")
    took = f" (woke in {event['wake_seconds']:.2f}s)" if event.get("wake_seconds") else ""
    console.print(
        f"{when} {event['session']} {_state(event['old'])} -> {_state(event['new'])}"
        f"  {event['reason']}{took}",
        highlight=False,
        soft_wrap=True,
    )


if __name__ == "__main__":
    app()
