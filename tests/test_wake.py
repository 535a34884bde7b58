"""Wake on request: held requests, single-flight starts, timeouts, failures, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import pytest

from siesta.core.model import State

from .admin import client as admin_client
from .admin import launch_admin
from .conftest import Launcher, backend_template, slow_start_template, wait_for


def test_first_request_wakes_a_sleeping_session(siesta: Launcher) -> None:
    """The request that finds alice asleep is held, alice starts, the request is served."""
    run = siesta()
    assert run.state("alice") is State.ASLEEP
    response = httpx.get(run.url("alice"), timeout=30)
    assert response.status_code == 200
    assert response.text.startswith("hello from alice")
    assert response.headers["x-siesta-wake"] == "cold"
    assert run.state("alice") is State.AWAKE
    again = httpx.get(run.url("alice"), timeout=30)
    assert again.headers["x-siesta-wake"] == "warm"
    assert run.start_count() == 1
    moves = [(e.old, e.new) for e in run.events("alice")]
    assert moves == [(State.ASLEEP, State.WAKING), (State.WAKING, State.AWAKE)]
    assert run.events("alice")[-1].wake_seconds > 0


def test_single_flight_under_200_concurrent_requests(siesta: Launcher) -> None:
    """200 concurrent requests for a sleeping session start one backend; all are served."""
    run = siesta(templates={"web": slow_start_template(0.5)})

    async def storm() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client.get(run.url("alice")) for _ in range(200)))

    responses = asyncio.run(storm())
    assert [r.status_code for r in responses] == [200] * 200
    assert {r.text.split(" pid ")[0] for r in responses} == {"hello from alice"}
    assert len({r.text for r in responses}) == 1  # one backend pid answered them all
    assert run.start_count() == 1
    assert sum(r.headers["x-siesta-wake"] == "cold" for r in responses) >= 100
    wakes = [e for e in run.events("alice") if e.new is State.WAKING]
    assert len(wakes) == 1


def test_wake_timeout_answers_503_with_retry_after(siesta: Launcher) -> None:
    """A backend that never becomes ready: the held request gets 503 + Retry-After."""
    never_ready = backend_template(
        command=[sys.executable, "-c", "import time; time.sleep(120)"],
        ready={"tcp": True},
        stop_grace="1s",
    )
    run = siesta(templates={"web": never_ready}, gateway={"wake_timeout": "1s"})
    response = httpx.get(run.url("alice"), timeout=30)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "alice" in response.text
    wait_for(lambda: run.state("alice") is State.ASLEEP, what="the failed start to be recorded")
    reasons = [e.reason for e in run.events("alice") if e.old is State.WAKING]
    assert reasons
    assert "start failed" in reasons[0]


def test_repeated_start_failures_make_the_session_failed(siesta: Launcher) -> None:
    """A command that dies at once: after max_start_failures the session is FAILED and
    refuses wakes with a Retry-After covering the backoff, without starting anything."""
    broken = backend_template(
        command=[sys.executable, "-c", "raise SystemExit(3)"],
        max_start_failures=2,
        failure_backoff="60s",
    )
    run = siesta(templates={"web": broken})
    for _ in range(2):
        response = httpx.get(run.url("alice"), timeout=30)
        assert response.status_code == 503
        assert "could not be woken" in response.text
        assert "exited" not in response.text  # the detail is for the log only
        event = response.headers["x-siesta-event"]
        assert event in response.text
        wait_for(lambda e=event: f"event {e}" in run.output(), what="the event in the log")
        text = " ".join(run.output().split())  # the console log wraps long lines
        assert "exited" in text[text.index(f"event {event}") :][:400]
    assert run.state("alice") is State.FAILED
    refused = httpx.get(run.url("alice"), timeout=30)
    assert refused.status_code == 503
    event = refused.headers["x-siesta-event"]
    wait_for(lambda: f"event {event}" in run.output(), what="the event in the log")
    assert "failed to start 2 times" in " ".join(run.output().split())
    assert int(refused.headers["retry-after"]) > 30
    assert len([e for e in run.events("alice") if e.new is State.WAKING]) == 2


def test_backend_killed_mid_request_gives_502_and_next_request_wakes_it(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killing the backend under a request in flight answers 502 with a reason; the
    session goes to sleep and the next request starts a new backend."""
    run, admin_base = launch_admin(siesta, monkeypatch)
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    pid = run.records()["alice"].pid
    assert pid

    def in_flight() -> bool:
        with admin_client(admin_base) as api:
            return bool(api.get("/api/sessions/alice").json()["inflight"] == 1)

    async def slow_request_then_kill() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            pending = asyncio.ensure_future(client.get(run.url("alice", "/slow?s=30")))
            await asyncio.to_thread(wait_for, in_flight, 15.0, "the slow request in flight")
            os.kill(pid, signal.SIGKILL)
            return await pending

    response = asyncio.run(slow_request_then_kill())
    assert response.status_code == 502
    assert "backend" in response.text
    wait_for(lambda: run.state("alice") is State.ASLEEP, what="alice to be marked asleep")
    assert "SIGKILL" in run.events("alice")[-1].reason
    again = httpx.get(run.url("alice"), timeout=30)
    assert again.status_code == 200
    assert again.headers["x-siesta-wake"] == "cold"
    assert run.start_count() == 2


def test_hold_queue_overflow_is_answered_at_once(siesta: Launcher) -> None:
    """With room for 2 held requests, 6 concurrent ones: 4 get 503 at once, 2 are served."""
    run = siesta(
        templates={"web": slow_start_template(1.0)},
        gateway={"max_held_per_session": 2},
    )

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.get(run.url("alice")) for _ in range(6)))

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert codes == [200, 200, 503, 503, 503, 503]


def test_browser_gets_the_waiting_page_then_the_app(siesta: Launcher) -> None:
    """A browser GET held longer than waiting_page_after gets an HTML page that reloads
    itself; once awake, the same URL serves the app. API clients are simply held."""
    run = siesta(
        templates={"web": slow_start_template(1.0)},
        gateway={"waiting_page_after": "100ms"},
    )
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    page = httpx.get(run.url("alice"), headers=browser, timeout=30)
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert 'http-equiv="refresh"' in page.text
    assert "alice" in page.text
    assert page.headers["retry-after"] == "1"
    served = wait_for(
        lambda: (
            (r := httpx.get(run.url("alice"), headers=browser, timeout=30)).status_code == 200 and r
        ),
        what="the app behind the waiting page",
    )
    assert served.text.startswith("hello from alice")
    assert run.start_count() == 1
