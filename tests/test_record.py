"""`siesta policy record`: a running siesta's signals written as a trace that `siesta
policy replay` reads. The conversion on hand-made snapshots, then end to end: a real
`siesta up`, real requests and a real websocket, the real CLI recording through the
admin API, and the trace replayed against the same config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from siesta import replay
from siesta.config import load_config
from siesta.record import Recorder, format_rows

from .admin import TOKEN, client, launch_admin
from .conftest import Launcher, wait_for


def _count(trace: Path, event: str) -> int:
    """Rows of `event` for alice in the trace written so far."""
    return sum(
        1 for line in trace.read_text().splitlines() if line.split(",")[1:3] == ["alice", event]
    )


def _snap(at: float, **sessions: dict[str, object]) -> dict[str, object]:
    base = {"requests": 0, "bytes": 0, "connections": 0, "last_activity": None}
    listed = [{"id": sid, **base, **fields} for sid, fields in sessions.items()]
    return {"at": at, "sessions": listed}


def test_snapshots_become_trace_rows() -> None:
    """The first look writes only what is open; then new requests share their bytes and
    sit at the last byte, bytes alone are a `bytes` row, connections open and close,
    cpu and app rows come when they change, and a restart's lower counters start over."""
    rec = Recorder()
    first = rec.rows(_snap(100.0, a={"requests": 7, "bytes": 900, "connections": 1}, b={}))
    assert first == [(100.0, "a", "connect", "")]
    rows = rec.rows(
        _snap(
            101.0,
            a={"requests": 9, "bytes": 1000, "connections": 0, "last_activity": 100.5},
            b={"bytes": 30, "cpu_percent": 12.34, "app": {"ok": True, "error": ""}},
        )
    )
    assert rows == [
        (100.5, "a", "request", "50"),
        (100.5, "a", "request", "50"),
        (101.0, "a", "disconnect", ""),
        (101.0, "b", "bytes", "30"),
        (101.0, "b", "cpu", "12.3"),
        (101.0, "b", "app", '{"ok": true}'),
    ]
    quiet = rec.rows(_snap(102.0, b={"bytes": 30, "cpu_percent": 12.31, "app": {"ok": True}}))
    assert quiet == []  # same cpu to 0.1, same map: nothing
    restarted = rec.rows(_snap(103.0, b={"requests": 1, "bytes": 5}))
    assert restarted == []  # counters went down: siesta restarted, start over from here
    assert rec.rows(_snap(104.0, b={"requests": 2, "bytes": 9})) == [(104.0, "b", "request", "4")]
    text = format_rows([(104.0, "b", "request", "4"), (104.0, "b", "connect", "")])
    assert (
        text
        == "1970-01-01T00:01:44.000+00:00,b,request,4\n1970-01-01T00:01:44.000+00:00,b,connect\n"
    )
    parsed = replay.parse_trace(text)
    assert [(r.at, r.session, r.event, r.value) for r in parsed] == [
        (104.0, "b", "request", "4"),
        (104.0, "b", "connect", ""),
    ]


def test_recording_a_running_siesta_and_replaying_it(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI records requests, a websocket's connect, messages and disconnect through
    the admin API until Ctrl-C; the trace replays against the same config."""
    run, base = launch_admin(siesta, monkeypatch)
    trace = tmp_path / "trace.csv"
    command = ["policy", "record", "-c", str(run.config), "-o", str(trace)]
    recorder = subprocess.Popen(
        [sys.executable, "-m", "siesta", *command, "--every", "200ms", "--for", "60s"],
        env={**os.environ, "SIESTA_ADMIN_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: trace.exists() and trace.stat().st_size > 0, what="the trace's header")
        with httpx.Client(timeout=30) as http:
            for _ in range(3):
                assert http.get(run.url("alice", "/")).status_code == 200
        wait_for(lambda: _count(trace, "disconnect") == 1, what="the client's disconnect row")
        with connect(run.url("alice", "/ws").replace("http", "ws", 1), open_timeout=20) as ws:
            wait_for(lambda: _count(trace, "connect") == 2, what="the websocket's connect row")
            for word in ("one", "two"):
                ws.send(word)
                assert ws.recv(timeout=10) == f"echo: {word}"
            wait_for(lambda: _count(trace, "bytes") >= 1, what="the messages' row")
        wait_for(lambda: _count(trace, "disconnect") == 2, what="the websocket's disconnect")
        recorder.send_signal(signal.SIGINT)  # Ctrl-C ends a recording cleanly
        _, errors = recorder.communicate(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
    assert recorder.returncode == 0, errors
    assert b"rows of 1 sessions" in errors
    rows = replay.read_trace(trace)
    events = [r.event for r in rows if r.session == "alice"]
    assert events.count("request") >= 4  # three GETs and the websocket's upgrade
    assert events.count("connect") == 2
    assert events.count("disconnect") == 2
    assert "bytes" in events  # the websocket's messages: traffic without requests
    with client(base) as api:
        assert api.get("/api/signals").json()["sessions"][0]["id"] == "alice"
    report = replay.replay(rows, replay.setups_from(load_config(run.config)))
    assert report.session("alice").wakes == 1
