"""The CLI commands that talk to a running siesta through its admin API, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import httpx
import psutil
import pytest

from siesta.core.model import State

from .admin import launch_admin
from .conftest import Launcher, SiestaProcess, backend_template


def cli(run: SiestaProcess, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m siesta ARGS -c <run's config>`, with a wide terminal for Rich."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "siesta", *args, "-c", str(run.config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def running(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> SiestaProcess:
    """A siesta that made its own token: the CLI must find it in the state folder."""
    run, _ = launch_admin(siesta, monkeypatch, token=None)
    return run


def test_sessions_create_list_delete(running: SiestaProcess) -> None:
    """`sessions create` with labels, `sessions list`, `sessions delete`; errors are one
    line and exit 1 (2 for a malformed --label)."""
    made = cli(running, "sessions", "create", "bob", "--template", "web", "-l", "team=a")
    assert made.returncode == 0, made.stderr
    assert "created bob" in made.stdout
    assert running.records()["bob"].labels == {"team": "a"}
    listed = cli(running, "sessions", "list")
    assert listed.returncode == 0, listed.stderr
    assert "bob" in listed.stdout
    assert "team=a" in listed.stdout
    again = cli(running, "sessions", "create", "bob", "--template", "web")
    assert again.returncode == 1
    assert again.stderr.strip() == "error session 'bob' already exists"
    unknown = cli(running, "sessions", "create", "carol", "--template", "nope")
    assert unknown.returncode == 1
    assert "unknown template 'nope'" in unknown.stderr
    bad_label = cli(running, "sessions", "create", "carol", "-t", "web", "--label", "oops")
    assert bad_label.returncode == 2
    assert "key=value" in bad_label.stderr
    gone = cli(running, "sessions", "delete", "bob")
    assert gone.returncode == 0, gone.stderr
    assert "deleted bob" in gone.stdout
    assert "bob" not in running.records()
    missing = cli(running, "sessions", "delete", "bob")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error no session 'bob'"


def test_wake_sleep_and_events(running: SiestaProcess) -> None:
    """`wake` waits until awake and says so; `sleep` stops the backend; `events` lists
    both, oldest first, optionally of one session."""
    woke = cli(running, "wake", "alice")
    assert woke.returncode == 0, woke.stderr
    assert "alice is AWAKE" in woke.stdout
    assert running.state("alice") is State.AWAKE
    pid = running.records()["alice"].pid
    assert pid is not None
    slept = cli(running, "sleep", "alice")
    assert slept.returncode == 0, slept.stderr
    assert "alice is ASLEEP" in slept.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    listed = cli(running, "events", "--session", "alice")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[2:5] for line in lines] == [
        ["ASLEEP", "->", "WAKING"],
        ["WAKING", "->", "AWAKE"],
        ["AWAKE", "->", "STOPPING"],
        ["STOPPING", "->", "ASLEEP"],
    ]
    assert datetime.fromisoformat(lines[0].split()[0]).utcoffset() is not None
    assert "woke in" in lines[1]
    assert "put to sleep through the admin API" in lines[2]
    assert cli(running, "wake", "nobody").stderr.strip() == "error no session 'nobody'"


def test_json_output_for_scripts(running: SiestaProcess) -> None:
    """--json on status, sessions list, events and policy explain: one JSON document on
    stdout with the API's fields; event times also in ISO 8601 with their offset."""
    assert cli(running, "wake", "alice").returncode == 0
    status = json.loads(cli(running, "status", "--json").stdout)
    assert status["running"] is True
    assert [(s["id"], s["state"]) for s in status["sessions"]] == [("alice", "AWAKE")]
    listed = json.loads(cli(running, "sessions", "list", "--json").stdout)
    assert listed[0]["id"] == "alice"
    assert listed[0]["pid"] == running.records()["alice"].pid
    events = [json.loads(line) for line in cli(running, "events", "--json").stdout.splitlines()]
    assert [(e["old"], e["new"]) for e in events] == [("ASLEEP", "WAKING"), ("WAKING", "AWAKE")]
    assert datetime.fromisoformat(events[0]["time"]).timestamp() == pytest.approx(
        events[0]["at"], abs=1
    )
    explained = json.loads(cli(running, "policy", "explain", "alice", "--json").stdout)
    assert explained["session"] == "alice"
    assert explained["rules"]
    running.stop()
    stored = json.loads(cli(running, "status", "--json").stdout)
    assert stored["running"] is False
    assert "not running" in stored["why"]
    assert stored["sessions"][0]["id"] == "alice"


def test_events_follow_prints_new_events(running: SiestaProcess) -> None:
    """`events --follow` keeps printing events as they happen, until stopped."""
    env = {**os.environ, "COLUMNS": "200"}
    follower = subprocess.Popen(
        [sys.executable, "-m", "siesta", "events", "--follow", "-c", str(running.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert httpx.get(running.url("alice"), timeout=30).status_code == 200
        assert follower.stdout is not None
        first, second = follower.stdout.readline(), follower.stdout.readline()
        assert "ASLEEP -> WAKING" in first
        assert "request GET /" in first
        assert "WAKING -> AWAKE" in second
    finally:
        follower.terminate()
        follower.wait(10)


def test_a_wake_that_fails_is_one_line_with_the_retry(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session whose backend cannot start: `wake` exits 1 with the reason and when to retry."""
    broken = backend_template(command=[sys.executable, "-c", "raise SystemExit(3)"])
    run, _ = launch_admin(siesta, monkeypatch, token=None, templates={"web": broken})
    failed = cli(run, "wake", "alice")
    assert failed.returncode == 1
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error session 'alice' ")
    assert "retry in" in line


def test_commands_say_when_siesta_is_not_running(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing at the admin address, each command prints one clear line, exit 1;
    with a wrong token, the 401 says how to give the right one."""
    run, _ = launch_admin(siesta, monkeypatch, token=None)
    monkeypatch.setenv("SIESTA_ADMIN_TOKEN", "wrong")
    refused = cli(run, "sessions", "list")
    assert refused.returncode == 1
    assert "wrong admin token" in refused.stderr
    assert "SIESTA_ADMIN_TOKEN" in refused.stderr
    monkeypatch.delenv("SIESTA_ADMIN_TOKEN")
    run.stop()
    for args in (["wake", "alice"], ["sleep", "alice"], ["events"], ["sessions", "list"]):
        result = cli(run, *args)
        assert result.returncode == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error siesta is not running: nothing listens at"), args


def test_the_token_can_come_from_the_environment(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SIESTA_ADMIN_TOKEN set, siesta writes no token file and the CLI uses the variable."""
    run, _ = launch_admin(siesta, monkeypatch)
    assert not (run.state_dir / "admin-token").exists()
    result = cli(run, "sessions", "list")
    assert result.returncode == 0, result.stderr
    assert "alice" in result.stdout
