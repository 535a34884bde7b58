"""Sleeps come when the rule turns true, not at the next poll: a real `siesta up`, real
backends, real sockets. Times are compared from siesta's own event records (wall clock,
same machine) against when the test's last request ended, never by waiting in the test."""

from __future__ import annotations

import socket
import time

import httpx

from siesta.core.model import State

from .conftest import Launcher, backend_template, wait_for

RULE = 'idle_for > duration("2s") && connections == 0 && inflight == 0'
IDLE = 2.0  # seconds, the rule's threshold
LATE = 1.0  # seconds a sleep may come after the rule turned true


def _template() -> dict[str, object]:
    template = backend_template(policy="quiet")
    del template["idle_timeout"]
    return template


def _stopping_at(run: object, session: str = "alice") -> float:
    events = run.events(session)  # type: ignore[attr-defined]
    return float(next(e.at for e in reversed(events) if e.new is State.STOPPING))


def test_a_connections_rule_sleeps_within_a_second_of_turning_true(siesta: Launcher) -> None:
    """check_every is 30s, yet the session sleeps 2s (+ at most 1s) after the last request
    ended and its connection closed: the end of the request and the close of the
    connection are what bring the check, not a timer."""
    run = siesta(
        templates={"web": _template()},
        policies={"quiet": {"sleep_when": RULE}},  # check_every: the default, 30s
    )
    with httpx.Client(timeout=30) as http:
        assert http.get(run.url("alice", "/")).status_code == 200  # wakes it
        assert http.get(run.url("alice", "/slow?s=1.5")).status_code == 200  # in flight 1.5s
    ended = time.time()  # the request answered and the connection closed
    wait_for(lambda: run.state("alice") is State.ASLEEP, timeout=20, what="alice to sleep")
    slept = _stopping_at(run)
    assert ended + IDLE - 0.05 <= slept <= ended + IDLE + LATE, slept - ended
    stopping = next(e for e in run.events("alice") if e.new is State.STOPPING)
    assert "connections=0, inflight=0" in stopping.reason


def test_an_open_idle_connection_holds_until_it_closes(siesta: Launcher) -> None:
    """A client keeps a silent keep-alive connection open for 4s (twice the threshold):
    the session stays awake; it sleeps at once (within 1s) when the connection closes."""
    run = siesta(templates={"web": _template()}, policies={"quiet": {"sleep_when": RULE}})
    with socket.create_connection(("127.0.0.1", run.port), timeout=30) as sock:
        sock.sendall(b"GET /s/alice/ HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"hello from alice" not in answer:
            answer += sock.recv(65536)
        held_until = time.time() + 2 * IDLE
        while time.time() < held_until:  # the silent connection stays open, watched
            assert run.state("alice") is State.AWAKE
            time.sleep(0.1)
        closed = time.time()
    wait_for(lambda: run.state("alice") is State.ASLEEP, timeout=20, what="alice to sleep")
    slept = _stopping_at(run)
    assert closed - 0.05 <= slept <= closed + LATE, slept - closed
