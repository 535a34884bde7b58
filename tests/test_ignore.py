"""Traffic that is served but is not activity (`activity.ignore`): the patterns, the
websocket frame scanner, and end to end through a real siesta, where ignored polls and
websocket pings let a session sleep while real requests and messages keep it awake."""

from __future__ import annotations

import os
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from siesta.core.ignore import JUPYTER_IGNORE, ActivityFilter
from siesta.core.model import State
from siesta.gateway.frames import FrameScanner

from .conftest import Launcher, backend_template, wait_for


def _frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    """One websocket frame (FIN set), masked as a client sends it."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_request_patterns_methods_and_user_agents() -> None:
    """Method-qualified and bare path globs, the query left out; methods anywhere;
    user agents by glob."""
    rule = ActivityFilter(
        ["GET /api/kernels", "/healthz", "GET /api/contents/*"],
        methods=["OPTIONS"],
        user_agents=["kube-probe/*"],
    )
    assert rule.ignores(b"GET", b"/api/kernels?1700000000", None)
    assert not rule.ignores(b"POST", b"/api/kernels", None)
    assert not rule.ignores(b"GET", b"/api/kernels/abc/channels", None)
    assert rule.ignores(b"PUT", b"/healthz", None)
    assert rule.ignores(b"GET", b"/api/contents/a/b.ipynb?content=0", None)
    assert not rule.ignores(b"PUT", b"/api/contents/a/b.ipynb", None)  # a save counts
    assert rule.ignores(b"OPTIONS", b"/anything", None)
    assert rule.ignores(b"GET", b"/", b"kube-probe/1.30")
    assert not rule.ignores(b"GET", b"/", b"Mozilla/5.0")
    jupyter = ActivityFilter(JUPYTER_IGNORE)
    assert jupyter.ignores(b"GET", b"/api/sessions?1700000000", None)
    assert not jupyter.ignores(b"POST", b"/api/sessions", None)  # opening a notebook


def test_the_frame_scanner_tells_data_from_pings_across_reads() -> None:
    """Pings and pongs alone are not activity; a data frame is, even split over reads, and
    a large frame's payload is skipped by its length."""
    scanner = FrameScanner()
    assert not scanner.feed(_frame(0x9, b"ping") + _frame(0xA, b"pong"))
    big = _frame(0x2, b"x" * 70_000)
    assert scanner.feed(big[:3])  # a data frame's header, split
    assert scanner.feed(big[3:50_000])
    assert scanner.feed(big[50_000:])
    assert not scanner.feed(_frame(0x9, b""))
    text = _frame(0x1, b"hello")
    assert scanner.feed(text[:1])  # the first byte tells a text frame
    assert scanner.feed(text[1:])
    assert not scanner.feed(_frame(0xA, b"pong")[:1])
    server = FrameScanner()
    assert not server.feed(_frame(0x9, b"", masked=False))
    assert server.feed(_frame(0x1, b"hi", masked=False) + _frame(0xA, b"", masked=False))


def test_ignored_polls_and_pings_let_a_session_sleep(siesta: Launcher) -> None:
    """GET /headers is ignored and the websocket sends pings only: alice sleeps 1s after
    its last counted byte though the polls and pings go on; a counted request and a
    websocket message each reset idle_for."""
    template = backend_template(
        idle_timeout="1500ms",
        activity={"ignore": {"requests": ["GET /headers"]}},
    )
    run = siesta(templates={"web": template})
    with httpx.Client(timeout=30) as http:
        assert http.get(run.url("alice", "/")).status_code == 200  # counted: wakes it
        woke = time.monotonic()
        ws_url = run.url("alice", "/ws").replace("http", "ws", 1)
        with connect(ws_url, open_timeout=20, ping_interval=None) as ws:
            ws.send("a message")  # counted
            assert ws.recv(timeout=10) == "echo: a message"
            while run.state("alice") is State.AWAKE:
                assert http.get(run.url("alice", "/headers")).status_code == 200
                ws.ping()  # control frames: not activity
                assert time.monotonic() - woke < 20, "the ignored traffic kept alice awake"
                time.sleep(0.2)
    wait_for(lambda: run.state("alice") is State.ASLEEP, what="alice to sleep")
    stopping = next(e for e in reversed(run.events("alice")) if e.new is State.STOPPING)
    assert "idle_for" in stopping.reason


def test_ignored_traffic_never_wakes_and_an_ignored_websocket_is_quiet(siesta: Launcher) -> None:
    """An ignored request to a sleeping session is answered 503 with Retry-After and
    leaves it asleep; a websocket whose upgrade request is ignored carries messages both
    ways without counting, so the session sleeps while they flow."""
    template = backend_template(
        idle_timeout="1500ms",
        activity={"ignore": {"requests": ["GET /headers", "GET /ws"]}},
    )
    run = siesta(templates={"web": template})
    with httpx.Client(timeout=30) as http:
        answer = http.get(run.url("alice", "/headers"))
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "10"
        assert "does not wake" in answer.text
        assert run.state("alice") is State.ASLEEP
        assert http.get(run.url("alice", "/")).status_code == 200  # counted: wakes it
        woke = time.monotonic()
        ws_url = run.url("alice", "/ws").replace("http", "ws", 1)
        with connect(ws_url, open_timeout=20, ping_interval=None) as ws:
            while run.state("alice") is State.AWAKE:
                try:
                    ws.send("a message")  # data frames, but on an ignored websocket
                    assert ws.recv(timeout=10) == "echo: a message"
                except ConnectionClosed:  # the sleep closed it between check and send
                    break
                assert time.monotonic() - woke < 20, "the ignored websocket kept alice awake"
                time.sleep(0.2)
    wait_for(lambda: run.state("alice") is State.ASLEEP, what="alice to sleep")
    assert [e.new for e in run.events("alice")].count(State.WAKING) == 1


@pytest.mark.parametrize("bad", ["GET api/x", ""])
def test_bad_patterns_are_refused_at_load(tmp_path: object, bad: str) -> None:
    """A request pattern whose path does not start with / is refused with its key."""
    from pathlib import Path

    from siesta.config import ConfigError, parse_config

    text = f'templates:\n  web: {{command: [x], activity: {{ignore: {{requests: ["{bad}"]}}}}}}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="s.yaml", base_dir=Path(str(tmp_path)))
    assert "templates.web.activity.ignore.requests: " in caught.value.problems[0]
    assert "the path must start with /" in caught.value.problems[0]
