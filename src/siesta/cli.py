"""The `siesta` command: Typer for arguments, Rich for output; no logic of its own."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import queue
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from siesta.config import ConfigError, config_json_schema, load_config
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


if __name__ == "__main__":
    app()
