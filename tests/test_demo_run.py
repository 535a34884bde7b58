"""`siesta demo`, run as a real process the way `make demo` runs it.

The scripted scenario (`--traffic --idle 1s`) goes end to end: real gateway, real
demo backends, a summary read from the store, and no backend left behind. The
arithmetic of the summary is checked through its pure functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from siesta.core.model import State, Transition
from siesta.demo import run as demo_run
from siesta.demo.run import percentile, running_seconds
from siesta.store.sqlite import SqliteStore

DEMO_TIMEOUT = 120.0


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_demo(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m siesta demo ARGS` in `folder`, wide output, until it exits."""
    env = {**os.environ, "COLUMNS": "160", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "siesta", "demo", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )


def demo_backends(folder: Path) -> list[psutil.Process]:
    """Demo backends still running that were started from `folder` (they inherit its cwd)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = proc.info["cmdline"] or []
        if "siesta.demo" in cmdline and proc.info["cwd"] == str(folder):
            found.append(proc)
    return found


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A folder to run the demo in; any backend left behind is killed at teardown."""
    yield tmp_path
    for proc in demo_backends(tmp_path):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def summary_counts(output: str, session: str) -> tuple[int, int, int]:
    """Requests, wakes and sleeps of `session` in the summary table of the demo's output."""
    summary = output.partition("summary of ")[2]
    found = re.search(rf"^\W*{session}\s+(\d+)\s+(\d+)\s+(\d+)\s", summary, re.MULTILINE)
    assert found, f"no summary row for {session} in:\n{output}"
    requests, wakes, sleeps = (int(group) for group in found.groups())
    return requests, wakes, sleeps


def test_scripted_demo_wakes_sleeps_and_leaves_nothing_running(folder: Path) -> None:
    """`siesta demo --traffic --idle 1s` succeeds, alice wakes at least twice, no backend stays."""
    state_dir = folder / "state"
    args = ["--traffic", "--idle", "1s", "--port", str(free_port()), "--state-dir", str(state_dir)]
    done = run_demo(folder, *args)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    requests, wakes, sleeps = summary_counts(done.stdout, "alice")
    assert requests > 0
    assert wakes >= 2
    assert sleeps == wakes
    assert "requests answered 200" in done.stdout
    assert demo_backends(folder) == []
    store = SqliteStore(state_dir / "state.db")
    try:
        records = store.sessions()
        woke = {e.session for e in store.events(limit=100_000) if e.new is State.AWAKE}
    finally:
        store.close()
    assert {r.id for r in records} == {"alice", "bob", "carol"} == woke
    assert all(r.state is State.ASLEEP and r.pid is None for r in records)


def test_a_taken_port_is_one_line_naming_the_option(folder: Path) -> None:
    """With the port in use, the demo says so in one line that suggests --port, and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_demo(folder, "--port", str(port), "--state-dir", str(folder / "state"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(port) in lines[0]
    assert "--port" in lines[0]
    assert demo_backends(folder) == []


def test_a_port_taken_after_the_check_is_still_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """If the port is taken between the check and the listen, serve's OSError is reported."""
    monkeypatch.setattr(demo_run, "port_problem", lambda port: None)
    monkeypatch.setattr(demo_run, "install_uvloop", lambda: False)
    out = Console(file=io.StringIO())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = demo_run.run_demo(
            out, port=port, idle="1s", state_dir=tmp_path / "state", traffic=False
        )
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"port {port}" in error
    assert "--port" in error


def test_a_state_folder_in_use_is_refused(folder: Path) -> None:
    """A second demo on the same state folder is refused with a hint to use --state-dir."""
    state_dir = folder / "state"
    state_dir.mkdir()
    with open(state_dir / "siesta.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = run_demo(folder, "--port", str(free_port()), "--state-dir", str(state_dir))
    assert done.returncode == 1
    assert "--state-dir" in done.stderr


def test_a_bad_idle_timeout_is_a_usage_error(folder: Path) -> None:
    """`--idle soon` is refused before anything starts, with exit code 2."""
    done = run_demo(folder, "--idle", "soon", "--port", str(free_port()))
    assert done.returncode == 2
    assert "--idle" in done.stderr


def _event(at: float, old: State, new: State) -> Transition:
    return Transition("alice", at, old, new, "test")


def test_running_seconds_counts_waking_awake_and_stopping_inside_the_window() -> None:
    """Time from WAKING to ASLEEP counts, clipped to the window; time asleep does not."""
    events = [
        _event(10.0, State.ASLEEP, State.WAKING),
        _event(10.5, State.WAKING, State.AWAKE),
        _event(20.0, State.AWAKE, State.STOPPING),
        _event(20.5, State.STOPPING, State.ASLEEP),
        _event(30.0, State.ASLEEP, State.WAKING),
    ]
    assert running_seconds(events, 0.0, 40.0, State.ASLEEP) == pytest.approx(20.5)
    assert running_seconds(events, 15.0, 35.0, State.ASLEEP) == pytest.approx(10.5)
    assert running_seconds([], 0.0, 40.0, State.AWAKE) == pytest.approx(40.0)


def test_percentile_is_nearest_rank() -> None:
    """p50 and p95 of a few wake times are values that occurred; none without values."""
    assert percentile([0.3, 0.1, 0.2], 0.5) == 0.2
    assert percentile([0.3, 0.1, 0.2], 0.95) == 0.3
    assert percentile([0.4], 0.5) == 0.4
    assert percentile([], 0.5) is None
