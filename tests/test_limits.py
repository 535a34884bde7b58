"""Abuse limits (issue 9): stalled request bodies, a cap on running sessions, a per-client
wake rate and a per-client share of the hold queue. Real siesta processes, real sockets."""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from siesta.core.limits import ClientCounts, Rate, WakeRates, client_key, parse_rate
from siesta.core.model import State

from .conftest import Launcher, SiestaProcess, backend_template, slow_start_template, wait_for

TINY = str(Path(__file__).with_name("tiny_backend.py"))


def tiny(**extra: Any) -> dict[str, Any]:
    """tests/tiny_backend.py: quick to start and to stop (`extra` overrides)."""
    command = [sys.executable, "-S", TINY, "{port}", "{session}"]
    return backend_template(**{"command": command, "stop_grace": "2s", **extra})


def sessions(*names: str, template: str = "web") -> dict[str, Any]:
    return {name: {"template": template} for name in names}


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def read_to_close(sock: socket.socket, timeout: float = 20.0) -> bytes:
    """Everything the gateway sends until it closes the connection (fails after timeout)."""
    sock.settimeout(timeout)
    chunks = []
    while part := sock.recv(65536):
        chunks.append(part)
    return b"".join(chunks)


def client(source: str = "127.0.0.1") -> httpx.Client:
    """An HTTP client whose connections come from `source` (any 127.x is loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=60)


def most_running(events: Iterable[Any]) -> int:
    """The most sessions with a backend (WAKING, AWAKE or STOPPING) at any one time, as
    the recorded events tell it."""
    running: set[str] = set()
    most = 0
    for event in events:
        if event.new in (State.WAKING, State.AWAKE, State.STOPPING):
            running.add(event.session)
        else:
            running.discard(event.session)
        most = max(most, len(running))
    return most


def held_now(run: SiestaProcess) -> int:
    text = httpx.get(f"http://127.0.0.1:{run.admin_port}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("siesta_held_requests "))
    return int(float(line.split()[1]))


def admin_sleep(run: SiestaProcess, session: str) -> None:
    token = (run.state_dir / "admin-token").read_text().strip()
    answer = httpx.post(
        f"http://127.0.0.1:{run.admin_port}/api/sessions/{session}/sleep",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text


# -- request bodies -------------------------------------------------------------------


def test_a_stalled_body_gets_408_and_the_session_then_sleeps(siesta: Launcher) -> None:
    """A POST that declares 1000 bytes and sends 3 is answered 408 after body_timeout and
    its connection closed; it no longer counts as in flight, so the session sleeps on its
    idle timeout (before, it stayed awake as long as the client kept the socket open)."""
    run = siesta(
        templates={"web": backend_template(idle_timeout="2s")},
        gateway={"body_timeout": "1s"},
    )
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    with socket.create_connection(("127.0.0.1", run.port)) as sock:
        sock.sendall(b"POST /s/alice/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        answer = read_to_close(sock)
        assert status_of(answer) == 408
        assert b"the request body stalled for 1s" in answer
        assert b"Connection: close" in answer
        wait_for(lambda: run.state("alice") is State.ASLEEP, timeout=30, what="alice asleep")
    last = run.events("alice")[-1]
    assert last.new is State.ASLEEP
    assert last.reason.startswith("idle")


def test_a_slow_but_steady_body_is_not_cut(siesta: Launcher) -> None:
    """body_timeout is about a body that stops, not a slow one: bytes that keep coming,
    for longer in all than body_timeout, reach the backend whole."""
    run = siesta(gateway={"body_timeout": "1500ms"})
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    with socket.create_connection(("127.0.0.1", run.port)) as sock:
        sock.sendall(b"POST /s/alice/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            time.sleep(0.3)  # the pace of the upload, not a synchronisation
            sock.sendall(b"x")
        sock.settimeout(20)
        answer = b""
        while b"}" not in answer:  # the head and the JSON body may come apart
            answer += sock.recv(65536)
    assert status_of(answer) == 200
    assert b'"size":10' in answer


def test_request_timeout_bounds_a_whole_upload(siesta: Launcher) -> None:
    """A body that trickles (so body_timeout never fires) is cut at request_timeout."""
    run = siesta(gateway={"body_timeout": "5s", "request_timeout": "1s"})
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    with socket.create_connection(("127.0.0.1", run.port)) as sock:
        sock.sendall(b"POST /s/alice/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if select.select([sock], [], [], 0.2)[0]:
                break  # the gateway answered
            sock.sendall(b"x")
        answer = read_to_close(sock)
    assert status_of(answer) == 408
    assert b"the request body took longer than 1s" in answer


def test_a_body_the_gateway_holds_back_is_not_a_stall(siesta: Launcher) -> None:
    """While the session wakes, the gateway stops reading a large body (flow control);
    that pause is not the client's, so a wake longer than body_timeout still gets the
    whole body through."""
    run = siesta(
        templates={"web": slow_start_template(2.5)},
        gateway={"body_timeout": "1s"},
    )
    body = b"y" * 2_000_000
    answer = httpx.post(run.url("alice", "/echo"), content=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["size"] == len(body)


# -- max_awake -----------------------------------------------------------------------


def test_max_awake_reject_answers_503_with_retry_after(siesta: Launcher) -> None:
    """With max_awake 1, a second session's wake is refused with a 503, Retry-After and a
    reason that says so, and no backend is started for it; once the first sleeps, the
    second wakes."""
    run = siesta(
        templates={"web": tiny()},
        sessions=sessions("alice", "bob"),
        gateway={"max_awake": 1},
    )
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    refused = httpx.get(run.url("bob"), timeout=30)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "30"
    assert "too many sessions are awake" in refused.text
    assert "X-Siesta-Event" in refused.headers
    assert run.state("bob") is State.ASLEEP
    assert run.start_count() == 1
    admin_sleep(run, "alice")
    assert httpx.get(run.url("bob"), timeout=30).status_code == 200


def test_max_awake_evict_idle_sleeps_the_longest_idle(siesta: Launcher) -> None:
    """With evict_idle, a wake at the cap first puts to sleep the awake session that has
    been idle longest (recorded with the reason), then wakes: the others stay awake."""
    run = siesta(
        templates={"web": tiny()},
        sessions=sessions("a", "b", "c"),
        gateway={"max_awake": 2, "max_awake_policy": "evict_idle"},
    )
    assert httpx.get(run.url("a"), timeout=30).status_code == 200
    assert httpx.get(run.url("b"), timeout=30).status_code == 200
    assert httpx.get(run.url("c"), timeout=30).status_code == 200
    assert run.state("a") is State.ASLEEP
    assert run.state("b") is State.AWAKE
    assert run.state("c") is State.AWAKE
    stopping = [e for e in run.events("a") if e.new is State.STOPPING]
    assert len(stopping) == 1
    assert stopping[0].reason.startswith("evicted: idle ")
    assert "to make room for c (gateway.max_awake 2)" in stopping[0].reason
    assert most_running(run.events()) <= 2


def test_evict_idle_never_takes_a_session_serving_a_request(siesta: Launcher) -> None:
    """The longest-idle session is passed over while a request of its own is in flight:
    the other one is evicted, and the slow request is answered whole."""
    run = siesta(
        sessions=sessions("a", "b", "c"),
        gateway={"max_awake": 2, "max_awake_policy": "evict_idle"},
    )
    assert httpx.get(run.url("a"), timeout=30).status_code == 200
    slow: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: slow.update(r=httpx.get(run.url("a", "/slow?s=4"), timeout=60))
    )
    thread.start()
    try:
        assert httpx.get(run.url("b"), timeout=30).status_code == 200
        assert httpx.get(run.url("c"), timeout=30).status_code == 200
        assert run.state("b") is State.ASLEEP
        assert run.state("a") is State.AWAKE
    finally:
        thread.join(60)
    assert slow["r"].status_code == 200
    assert slow["r"].text == "slow done\n"


def test_a_failed_start_gives_its_place_back(siesta: Launcher) -> None:
    """A session whose backend cannot start does not keep a place: with max_awake 1, the
    next session still wakes."""
    broken = tiny(command=[sys.executable, "-c", "raise SystemExit(3)"], max_start_failures=1)
    run = siesta(
        templates={"web": tiny(), "broken": broken},
        sessions={"bad": {"template": "broken"}, "good": {"template": "web"}},
        gateway={"max_awake": 1},
    )
    failed = httpx.get(run.url("bad"), timeout=30)
    assert failed.status_code == 503
    assert "too many sessions" not in failed.text
    assert httpx.get(run.url("good"), timeout=30).status_code == 200


def test_an_eviction_waits_for_a_slow_stop(siesta: Launcher) -> None:
    """The session evicted ignores SIGTERM, so its stop takes stop_grace: the wake that
    made room waits for it (the cap holds meanwhile), then is served."""
    deaf = (
        "import runpy, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    command = [sys.executable, "-c", deaf, TINY, "{port}", "{session}"]
    run = siesta(
        templates={"web": tiny(command=command, stop_grace="2s")},
        sessions=sessions("a", "b"),
        gateway={"max_awake": 1, "max_awake_policy": "evict_idle"},
    )
    assert httpx.get(run.url("a"), timeout=30).status_code == 200
    assert httpx.get(run.url("b"), timeout=30).status_code == 200
    events = run.events()
    assert most_running(events) == 1
    slept = next(e for e in events if e.session == "a" and e.new is State.ASLEEP)
    assert slept.reason.startswith("evicted: ")
    woke = next(e for e in events if e.session == "b" and e.new is State.WAKING)
    assert woke.at - slept.at >= 0  # b began only once a was gone
    assert woke.at - next(e for e in events if e.new is State.STOPPING).at >= 1.5


def _all_at_once(run: SiestaProcess, names: list[str]) -> list[httpx.Response]:
    """GET each session's URL (in `names` order) from its own thread, released together."""
    answers: dict[int, httpx.Response] = {}
    barrier = threading.Barrier(len(names))

    def get(i: int, name: str) -> None:
        barrier.wait()
        answers[i] = httpx.get(run.url(name), timeout=90)

    threads = [threading.Thread(target=get, args=(i, n)) for i, n in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [answers[i] for i in range(len(names))]


def test_one_wake_waiting_for_room_evicts_once(siesta: Launcher) -> None:
    """Five requests for one sleeping session at the cap (a page's requests, a waiting
    page's reloads): one session is evicted for it, not one per request."""
    run = siesta(
        templates={"web": tiny()},
        sessions=sessions("a", "b", "c"),
        gateway={"max_awake": 2, "max_awake_policy": "evict_idle"},
    )
    assert httpx.get(run.url("a"), timeout=30).status_code == 200
    assert httpx.get(run.url("b"), timeout=30).status_code == 200
    answers = _all_at_once(run, ["c"] * 5)
    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.text for a in answers}) == 1  # one backend of c answered them all
    evicted = [e for e in run.events() if e.new is State.STOPPING]
    assert [e.session for e in evicted] == ["a"]
    assert evicted[0].reason.startswith("evicted: ")
    assert run.state("b") is State.AWAKE


def test_concurrent_wakes_never_exceed_max_awake(siesta: Launcher) -> None:
    """Eight sessions woken at the same moment with max_awake 3 (reject): exactly three
    are served, the five others get 503 with Retry-After, and the record never shows more
    than three running."""
    names = [f"s{i}" for i in range(8)]
    run = siesta(
        templates={"web": tiny()},
        sessions=sessions(*names),
        gateway={"max_awake": 3},
    )
    answers = _all_at_once(run, names)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 3 + [503] * 5
    assert all(a.headers.get("Retry-After") for a in answers if a.status_code == 503)
    assert run.start_count() == 3
    assert most_running(run.events()) == 3


def test_concurrent_wakes_with_evict_idle_are_all_served_within_the_cap(
    siesta: Launcher,
) -> None:
    """Six sessions woken at once with max_awake 2 and evict_idle: each request waits for
    a place (a session served is idle, and is put to sleep for the next), all six are
    served, and no more than two ever run at once."""
    names = [f"s{i}" for i in range(6)]
    run = siesta(
        templates={"web": tiny()},
        sessions=sessions(*names),
        gateway={"max_awake": 2, "max_awake_policy": "evict_idle", "wake_timeout": "60s"},
    )
    answers = _all_at_once(run, names)
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    events = run.events()
    assert most_running(events) <= 2
    evicted = [e for e in events if e.new is State.STOPPING]
    assert len(evicted) >= 4
    assert all(e.reason.startswith("evicted: ") for e in evicted)


# -- per-client limits ---------------------------------------------------------------


def test_one_client_cannot_fill_the_hold_queue(siesta: Launcher) -> None:
    """With max_held_per_client 2, a client with two requests held gets a 503 for its
    third at once, while another client's request is still held and served."""
    run = siesta(
        templates={"web": slow_start_template(3.0)},
        gateway={"max_held_per_client": 2},
    )
    first = [socket.create_connection(("127.0.0.1", run.port)) for _ in range(2)]
    try:
        for sock in first:
            sock.sendall(b"GET /s/alice/ HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: held_now(run) == 2, what="two requests held")
        with client("127.0.0.1") as same:
            third = same.get(run.url("alice"))
        assert third.status_code == 503
        assert "too many of this client's requests are waiting" in third.text
        assert third.headers["Retry-After"] == "1"
        with client("127.0.0.2") as other:
            assert other.get(run.url("alice")).status_code == 200
        for sock in first:
            sock.settimeout(30)
            assert status_of(sock.recv(65536)) == 200
    finally:
        for sock in first:
            sock.close()


def test_the_wake_rate_limit_answers_429_with_retry_after(siesta: Launcher) -> None:
    """wake_rate 2/min: a client's third wake in a row gets 429 with Retry-After and
    starts nothing; requests to sessions already awake do not count; another client
    still wakes sessions."""
    run = siesta(
        templates={"web": tiny()},
        sessions=sessions("a", "b", "c"),
        gateway={"wake_rate": "2/min"},
    )
    with client("127.0.0.1") as one:
        assert one.get(run.url("a")).status_code == 200
        assert one.get(run.url("b")).status_code == 200
        limited = one.get(run.url("c"))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 30
        assert "woke too many sessions" in limited.text
        assert one.get(run.url("a")).status_code == 200  # awake: not a wake
    assert run.state("c") is State.ASLEEP
    assert run.start_count() == 2
    with client("127.0.0.2") as two:
        assert two.get(run.url("c")).status_code == 200


def test_behind_a_trusted_proxy_the_client_is_the_last_untrusted_hop(
    siesta: Launcher,
) -> None:
    """With trusted_proxies, the client is the last X-Forwarded-For address that is not
    a trusted proxy: what a client writes to the left of it changes nothing; from an
    address that is not trusted, X-Forwarded-For is ignored."""
    run = siesta(
        templates={"web": tiny()},
        sessions=sessions("a", "b", "c", "d"),
        gateway={"wake_rate": "1/min", "trusted_proxies": ["127.0.0.1/32"]},
    )

    def get(source: str, session: str, forwarded: str) -> int:
        with client(source) as c:
            return c.get(run.url(session), headers={"X-Forwarded-For": forwarded}).status_code

    assert get("127.0.0.1", "a", "203.0.113.7") == 200
    assert get("127.0.0.1", "b", "203.0.113.7") == 429
    assert get("127.0.0.1", "b", "198.51.100.1, 203.0.113.7") == 429  # a spoofed left part
    assert get("127.0.0.1", "b", "203.0.113.7, 127.0.0.1") == 429  # a trusted hop skipped
    assert get("127.0.0.1", "b", "203.0.113.8") == 200
    assert get("127.0.0.2", "c", "203.0.113.9") == 200  # not a proxy: its address counts
    assert get("127.0.0.2", "d", "203.0.113.10") == 429


# -- the bookkeeping, with time passed in --------------------------------------------


def test_rates_parse_with_units_and_durations() -> None:
    assert parse_rate("10/min") == Rate(10, 60.0)
    assert parse_rate("100/h") == Rate(100, 3600.0)
    assert parse_rate("5/30s") == Rate(5, 30.0)
    assert parse_rate("off") is None
    for bad in ("10", "0/min", "ten/min", "5/fortnight"):
        with pytest.raises(ValueError, match="is not a rate"):
            parse_rate(bad)


def test_a_bucket_gives_a_burst_then_refills_evenly() -> None:
    rates = WakeRates(Rate(2, 60.0))
    assert rates.take("a", 0.0) == 0.0
    assert rates.take("a", 0.0) == 0.0
    assert rates.take("a", 0.0) == pytest.approx(30.0)
    assert rates.take("a", 10.0) == pytest.approx(20.0)  # a refusal spends nothing
    assert rates.take("a", 30.0) == 0.0
    assert rates.take("b", 30.0) == 0.0  # every client has its own


def test_per_client_state_stays_bounded() -> None:
    """Refilled buckets are forgotten on the next sweep, the least recently used go past
    max_clients, and a client's held count is dropped at zero."""
    rates = WakeRates(Rate(1, 1.0), max_clients=100)
    for i in range(1000):
        rates.take(f"10.0.{i // 256}.{i % 256}", i * 0.001)
    assert len(rates) == 100
    rates.take("10.9.9.9", 100.0)  # past a period: the sweep forgets the refilled ones
    assert len(rates) == 1
    counts = ClientCounts()
    counts.add("x")
    counts.add("x")
    counts.remove("x")
    assert counts.get("x") == 1
    counts.remove("x")
    assert len(counts) == 0


def test_an_ipv6_client_is_its_64() -> None:
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"
