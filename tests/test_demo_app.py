"""The bundled demo backend, run as a real process the way ``siesta demo`` runs it.

The page's markup is checked through the pure ``render_page``, without a server.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from siesta.demo.app import DemoState, normalize_base_url, render_page

TICK = 0.1
"""The demo's tick interval in these tests, so five ticks take half a second, not five."""

START_DEADLINE = 15.0


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(proc: subprocess.Popen[bytes], base: str) -> None:
    """Poll ``/healthz`` until it answers, the process dies, or the deadline passes."""
    deadline = time.monotonic() + START_DEADLINE
    delay = 0.01
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"demo exited early with code {proc.returncode}"
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).text == "ok":
                return
        except httpx.TransportError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    pytest.fail(f"demo did not answer on {base} within {START_DEADLINE}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextmanager
def running_demo(session: str, *extra: str) -> Iterator[int]:
    """Run ``python -m siesta.demo`` for ``session`` until the block ends; yields its port."""
    port = free_port()
    args = ["--port", str(port), "--session", session, "--tick-interval", str(TICK), *extra]
    proc = subprocess.Popen([sys.executable, "-m", "siesta.demo", *args])
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}")
        yield port
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def demo_port() -> Iterator[int]:
    """A real demo backend for session "alice"; yields its port."""
    with running_demo("alice") as port:
        yield port


@pytest.fixture
def base(demo_port: int) -> str:
    """The demo's HTTP base URL."""
    return f"http://127.0.0.1:{demo_port}"


@pytest.fixture
def ws(demo_port: int) -> Iterator[ClientConnection]:
    """A websocket connected to the demo's clock."""
    with connect(f"ws://127.0.0.1:{demo_port}/ws", open_timeout=5) as conn:
        yield conn


def hits_on(page: str) -> int:
    """The hit counter shown on the page."""
    match = re.search(r'<b id="hits">(\d+)</b>', page)
    assert match, "no hit counter on the page"
    return int(match.group(1))


def recv_json(conn: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """Receive one JSON message."""
    message: dict[str, Any] = json.loads(conn.recv(timeout=timeout))
    return message


def test_page_shows_session_and_counts_hits(base: str) -> None:
    """The page names the session, and each load counts one more hit."""
    first = httpx.get(f"{base}/")
    second = httpx.get(f"{base}/")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/html")
    assert "alice" in first.text
    assert hits_on(second.text) == hits_on(first.text) + 1


def test_page_shows_start_time_and_pid(base: str) -> None:
    """The page shows when and as which pid the backend started, so a wake is visible."""
    page = httpx.get(f"{base}/").text
    info = httpx.get(f"{base}/api/info").json()
    assert f'<span id="pid">{info["pid"]}</span>' in page
    assert re.search(r'<span id="started">\d\d:\d\d:\d\d</span>', page)


def test_info_reports_without_counting(base: str) -> None:
    """``/api/info`` describes the backend and does not count as a hit."""
    httpx.get(f"{base}/")
    first = httpx.get(f"{base}/api/info").json()
    second = httpx.get(f"{base}/api/info").json()
    assert first["session"] == "alice"
    assert isinstance(first["pid"], int)
    assert first["started"] <= time.time()
    assert first["hits"] >= 1
    assert second["hits"] == first["hits"]


def test_events_stream_three_then_ends(base: str) -> None:
    """``/events`` is an event stream of three numbered events, then the end."""
    with httpx.stream("GET", f"{base}/events", timeout=5.0) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    assert body == "data: 1\n\ndata: 2\n\ndata: 3\n\n"


def test_healthz(base: str) -> None:
    """``/healthz`` answers "ok"."""
    assert httpx.get(f"{base}/healthz").text == "ok"


def test_websocket_ticks_and_echoes(ws: ClientConnection) -> None:
    """The clock ticks with the time and session, and echoes what the client sends."""
    first = recv_json(ws)
    assert first["session"] == "alice"
    assert first["tick"] == 1
    assert re.fullmatch(r"\d\d:\d\d:\d\d", first["time"])
    ws.send("hello")
    messages = [recv_json(ws) for _ in range(5)]
    assert {"echo": "hello"} in messages
    assert [m["tick"] for m in messages if "tick" in m] == [2, 3, 4, 5]


def test_websocket_goes_quiet_until_asked_for_more(ws: ClientConnection) -> None:
    """After five ticks the socket stays open but silent; "more" brings five more."""
    assert [recv_json(ws)["tick"] for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(TimeoutError):
        ws.recv(timeout=5 * TICK)
    ws.send("more")
    assert [recv_json(ws)["tick"] for _ in range(5)] == [6, 7, 8, 9, 10]


def test_routes_answer_with_and_without_the_prefix() -> None:
    """With a base URL, the routes answer whether or not the gateway strips it."""
    with running_demo("bob", "--base-url", "/s/bob") as port:
        for prefix in ("", "/s/bob"):
            base = f"http://127.0.0.1:{port}{prefix}"
            assert httpx.get(f"{base}/healthz").text == "ok"
            assert httpx.get(f"{base}/api/info").json()["session"] == "bob"
            assert "<code>/s/bob/</code>" in httpx.get(f"{base}/").text
            with connect(f"ws://127.0.0.1:{port}{prefix}/ws", open_timeout=5) as conn:
                assert recv_json(conn)["session"] == "bob"


def page_for(session: str) -> str:
    """The page of a fresh backend for ``session`` under ``/s/<session>/``."""
    state = DemoState(session=session, base_url=f"/s/{session}/", pid=1, started=0.0)
    return render_page(state)


def test_page_uses_only_relative_urls() -> None:
    """The page's links and websocket URL are relative, so any prefix or host works."""
    page = page_for("bob")
    assert not re.search(r'(href|src)="(/|https?:)', page)
    assert "location.host + dir + 'ws'" in page


def test_page_escapes_the_session() -> None:
    """A session id is shown as text, never as markup."""
    assert "&lt;b&gt;x&lt;/b&gt;" in page_for("<b>x</b>")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("", "/"), ("/", "/"), ("s/bob", "/s/bob/"), ("/s/bob", "/s/bob/"), ("/s/bob//", "/s/bob/")],
)
def test_normalize_base_url(given: str, expected: str) -> None:
    """Base URLs get exactly one leading and one trailing slash."""
    assert normalize_base_url(given) == expected
