"""HTTP strictness at the gateway: one Host, one routing header, framing it can re-frame,
forwarded headers only from trusted proxies, nothing a backend sends after a complete
response, and error answers that name a class of problem and an event id."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Launcher, SiestaProcess, backend_template, raw, wait_for

ODD = str(Path(__file__).with_name("oddbackend.py"))


def odd_template(mode: str, **extra: Any) -> dict[str, Any]:
    """A template running tests/oddbackend.py in `mode`, ready by TCP."""
    return backend_template(
        command=[sys.executable, ODD, "{port}", mode], ready={"tcp": True}, **extra
    )


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def responses(answer: bytes) -> int:
    """How many response heads are in `answer`."""
    return answer.count(b"HTTP/1.1 ")


@pytest.fixture
def awake(siesta: Launcher) -> SiestaProcess:
    """siesta with alice awake."""
    run = siesta()
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    return run


def test_two_host_headers_are_refused(awake: SiestaProcess) -> None:
    """RFC 9112: more than one Host is a 400, and the connection is closed; so is an
    HTTP/1.1 request with no Host at all."""
    two = b"GET /s/alice/ HTTP/1.1\r\nHost: alice\r\nHost: bob\r\n\r\n"
    answer = raw(awake.port, two)
    assert status_of(answer) == 400
    assert b"more than one Host" in answer
    assert responses(answer) == 1
    none = raw(awake.port, b"GET /s/alice/ HTTP/1.1\r\nX: y\r\n\r\n")
    assert status_of(none) == 400
    assert b"needs a Host" in none


def test_two_routing_headers_are_refused(siesta: Launcher) -> None:
    """With header routing, two X-Siesta-Session headers are a 400: the gateway must not
    route by one while the backend sees the other."""
    run = siesta(
        gateway={"routing": "header"},
        sessions={"alice": {"template": "web"}, "bob": {"template": "web"}},
    )
    two = b"GET / HTTP/1.1\r\nHost: t\r\nX-Siesta-Session: alice\r\nX-Siesta-Session: bob\r\n\r\n"
    answer = raw(run.port, two)
    assert status_of(answer) == 400
    assert b"more than one X-Siesta-Session" in answer
    assert run.start_count() == 0  # refused before anything woke


def test_framing_the_gateway_cannot_reframe_is_refused(awake: SiestaProcess) -> None:
    """Only `chunked` is re-framed: `gzip, chunked` is 501; a transfer coding in HTTP/1.0
    is 400; a version other than 1.0 and 1.1 is 505."""
    gzip = (
        b"POST /s/alice/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"0\r\n\r\n"
    )
    assert status_of(raw(awake.port, gzip)) == 501
    old = b"POST /s/alice/echo HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert status_of(raw(awake.port, old)) == 400
    future = raw(awake.port, b"GET /s/alice/ HTTP/2.0\r\nHost: t\r\n\r\n")
    assert status_of(future) == 505


def test_forwarded_headers_from_a_trusted_proxy_are_kept_and_appended(
    siesta: Launcher,
) -> None:
    """From an address in trusted_proxies, X-Forwarded-Proto and -Host are kept and every
    X-Forwarded-For line is kept, in order, with the proxy's own address appended."""
    run = siesta(gateway={"trusted_proxies": ["127.0.0.0/8"]})
    head = (
        b"GET /s/alice/headers HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n"
        b"X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: notebooks.example\r\nConnection: close\r\n\r\n"
    )
    answer = raw(run.port, head)
    assert status_of(answer) == 200
    seen = dict(httpx.Response(200, content=answer.split(b"\r\n\r\n", 1)[1]).json()["headers"])
    assert seen["x-forwarded-for"] == "203.0.113.9, 198.51.100.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "notebooks.example"


def test_a_get_body_the_backend_leaves_unread_never_reaches_a_client(
    siesta: Launcher, tmp_path: Path
) -> None:
    """http.server does not read GET bodies, so a body that is itself a request gets a
    second answer. That answer reaches no client, on this connection or any other, and
    the next requests are answered by their own responses."""
    log = tmp_path / "odd.log"
    run = siesta(templates={"web": odd_template("basic", env={"ODD_LOG": str(log)})})
    smuggled = b"GET /SMUGGLED HTTP/1.1\r\nHost: t\r\n\r\n"
    attack = (
        b"GET /s/alice/a HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
        + smuggled
    )
    follow = b"GET /s/alice/b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    seen: list[bytes] = []

    def bystander() -> None:
        for _ in range(20):
            seen.append(
                raw(run.port, b"GET /s/alice/c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            )

    threads = [threading.Thread(target=bystander) for _ in range(2)]
    for thread in threads:
        thread.start()
    answers = [raw(run.port, attack + follow) for _ in range(40)]
    for thread in threads:
        thread.join()
    assert "GET /SMUGGLED" in log.read_text()  # the backend did answer it ...
    for answer in answers:  # ... and nobody got that answer
        assert b"SMUGGLED" not in answer
        assert responses(answer) == 2
        assert b"path=/a\n" in answer
        assert answer.endswith(b"path=/b\n")
    for answer in seen:
        assert b"SMUGGLED" not in answer
        assert responses(answer) == 1
        assert answer.endswith(b"path=/c\n")


@pytest.mark.parametrize("mode", ["extra", "head"])
def test_bytes_after_a_complete_response_are_dropped_with_the_connection(
    siesta: Launcher, mode: str
) -> None:
    """A backend that sends an unasked-for response in the same write as its answer, or a
    body after a HEAD answer: each client gets only the answer to its request, also when
    many requests follow on reused connections."""
    run = siesta(templates={"web": odd_template(mode)})
    method = b"HEAD" if mode == "head" else b"GET"
    for _ in range(20):
        head = method + b" /s/alice/ HTTP/1.1\r\nHost: t\r\n\r\n"
        answer = raw(
            run.port, head * 3 + b"GET /s/alice/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert b"EXTRA" not in answer
        assert responses(answer) == 4
        assert answer.endswith(b"ok\n")


def test_error_answers_carry_an_event_id(awake: SiestaProcess) -> None:
    """An error answer names its class of problem and an event id, in the text and in
    X-Siesta-Event; a client error is not logged at the default level."""
    answer = httpx.get(f"{awake.base}/nowhere", timeout=10)
    assert answer.status_code == 404
    event = answer.headers["x-siesta-event"]
    assert answer.text.startswith("404 Not Found: no session in the path")
    assert f"(event {event})" in answer.text
    other = httpx.get(f"{awake.base}/nowhere", timeout=10).headers["x-siesta-event"]
    assert other != event


def test_bytes_from_an_idle_backend_connection_close_it(siesta: Launcher, tmp_path: Path) -> None:
    """A backend that speaks after its answer, while its connection waits in the pool:
    the gateway closes that connection rather than keep it for the next request, which
    gets its own answer on a new one."""
    log = tmp_path / "odd.log"
    run = siesta(templates={"web": odd_template("late", env={"ODD_LOG": str(log)})})
    first = httpx.get(run.url("alice"), timeout=30)
    assert first.text == "ok\n"
    opened = log.read_text().count("connection")  # the readiness probe's, and the first's
    wait_for(
        lambda: log.read_text().count("closed by the peer") == opened,
        what="the gateway to close the connection",
    )
    second = httpx.get(run.url("alice"), timeout=30)
    assert second.text == "ok\n"
    assert log.read_text().count("connection") == opened + 1  # it came on a new one
