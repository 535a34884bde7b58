"""HTTP/1.1 through the gateway: keep-alive, pipelining, bodies both ways, upgrades,
server-sent events, headers; and bad input that must hurt only its own connection."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
import threading
from collections.abc import Iterator

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from siesta.core.model import State

from .conftest import Launcher, SiestaProcess, backend_template, raw, wait_for


@pytest.fixture
def awake(siesta: Launcher) -> SiestaProcess:
    """siesta with alice already awake."""
    run = siesta(gateway={"max_head_size": 8192, "header_timeout": "1s"})
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    return run


def test_keep_alive_and_pipelining_answer_in_order(awake: SiestaProcess) -> None:
    """Three requests written at once on one connection get three answers, in order."""
    heads = b"".join(b"GET /s/alice/headers?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(3))
    close = b"GET /s/alice/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    answer = raw(awake.port, heads + close)
    assert answer.count(b"HTTP/1.1 200 OK") == 4
    positions = [answer.index(b'"query":"n=%d"' % i) for i in range(3)]
    assert positions == sorted(positions)
    assert answer.rstrip().endswith(b"pid " + str(awake.records()["alice"].pid).encode())


def test_forwarded_and_hop_by_hop_headers(awake: SiestaProcess) -> None:
    """X-Forwarded-* are set by siesta (a client that is not a trusted proxy cannot supply
    them); hop-by-hop headers (and those named in Connection) are not passed on; the path
    prefix is stripped."""
    response = httpx.get(
        awake.url("alice", "/headers?x=1"),
        headers={
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "Connection": "keep-alive, X-Private",
            "X-Private": "secret",
            "Keep-Alive": "timeout=5",
            "X-Kept": "yes",
        },
    )
    seen = dict(response.json()["headers"])
    assert response.json()["path"] == "/headers"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{awake.port}"
    assert seen["x-kept"] == "yes"
    assert "x-private" not in seen
    assert "keep-alive" not in seen


def test_chunked_upload_and_chunked_download(awake: SiestaProcess) -> None:
    """A chunked request body arrives whole; a streamed response arrives whole."""
    parts = [bytes([i]) * (10_000 + i) for i in range(20)]
    response = httpx.post(awake.url("alice", "/echo"), content=iter(parts), timeout=30)
    body = b"".join(parts)
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    big = httpx.get(awake.url("alice", "/big?n=3000000"), timeout=30)
    assert big.status_code == 200
    assert len(big.content) == 3_000_000


def test_head_request_keeps_the_connection_usable(awake: SiestaProcess) -> None:
    """HEAD gets headers without a body, and the next request on the connection works."""
    answer = raw(
        awake.port,
        b"HEAD /s/alice/ HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /s/alice/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200")
    assert b"hello from alice" in rest


def test_server_sent_events_stream_through(awake: SiestaProcess) -> None:
    """An event stream arrives event by event."""
    events = []
    with httpx.stream("GET", awake.url("alice", "/sse?n=5"), timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(line)
    assert events == [f"data: {i}" for i in range(5)]


def test_websocket_keeps_session_awake_while_it_carries_traffic(siesta: Launcher) -> None:
    """With a 1s idle timeout, a websocket exchanging messages keeps alice awake; once it is
    quiet and closed, alice goes to sleep."""
    run = siesta(templates={"web": {**_backend(), "idle_timeout": "1s"}})
    ws_url = f"ws://127.0.0.1:{run.port}/s/alice/ws"
    with ws_connect(ws_url, open_timeout=30) as ws:
        for i in range(12):  # about 3 s of traffic, three idle timeouts long
            ws.send(f"ping {i}")
            assert ws.recv(timeout=10) == f"echo: ping {i}"
            threading.Event().wait(0.25)  # pacing the traffic, not synchronising
        assert run.state("alice") is State.AWAKE
    wait_for(lambda: run.state("alice") is State.ASLEEP, what="alice to sleep once closed")
    sleeps = [e for e in run.events("alice") if e.new is State.STOPPING]
    assert len(sleeps) == 1
    assert "idle" in sleeps[0].reason


def test_idle_open_websocket_does_not_keep_the_session_awake(siesta: Launcher) -> None:
    """An open websocket that carries nothing is only an open connection: alice sleeps,
    and the websocket is closed by the backend going away."""
    run = siesta(templates={"web": {**_backend(), "idle_timeout": "1s"}})
    ws_url = f"ws://127.0.0.1:{run.port}/s/alice/ws"
    with ws_connect(ws_url, open_timeout=30) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
        wait_for(lambda: run.state("alice") is State.ASLEEP, what="alice to sleep")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def test_200mb_upload_streams_with_bounded_gateway_memory(awake: SiestaProcess) -> None:
    """A 200 MB upload passes through while the gateway's RSS grows by under 50 MB."""
    gateway = psutil.Process(awake.proc.pid)
    before = gateway.memory_info().rss
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, gateway.memory_info().rss)
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    block = b"s" * (1 << 20)
    digest = hashlib.sha256()
    for _ in range(200):
        digest.update(block)

    def body() -> Iterator[bytes]:
        for _ in range(200):
            yield block

    try:
        response = httpx.post(
            awake.url("alice", "/echo"),
            content=body(),
            headers={"Content-Length": str(200 << 20)},
            timeout=120,
        )
    finally:
        stop.set()
        sampler.join()
    assert response.json() == {"size": 200 << 20, "sha256": digest.hexdigest()}
    assert peak - before < 50 << 20, f"gateway RSS grew by {(peak - before) >> 20} MB"


def test_garbage_gets_400_and_hurts_no_one_else(awake: SiestaProcess) -> None:
    """Bytes that are not HTTP get 400 and a closed connection; others carry on."""
    with socket.create_connection(("127.0.0.1", awake.port)) as bystander:
        answer = raw(awake.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 Bad Request")
        assert b"malformed request" in answer
        bystander.sendall(b"GET /s/alice/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert b"hello from alice" in _read_all(bystander)


def test_oversized_head_gets_431(awake: SiestaProcess) -> None:
    """A request head over max_head_size (8 KiB here) gets 431 and a closed connection."""
    answer = raw(
        awake.port, b"GET /s/alice/ HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431")


def test_broken_chunked_body_gets_400(awake: SiestaProcess) -> None:
    """A chunk size that is not hex is a 400; the backend connection is dropped."""
    answer = raw(
        awake.port,
        b"POST /s/alice/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nzz\r\nnope\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert httpx.get(awake.url("alice")).status_code == 200


def test_slow_client_that_never_finishes_its_head_is_closed(awake: SiestaProcess) -> None:
    """A client that sends half a head and stalls is answered 408 and closed after the
    header timeout (1s here), while other clients are served meanwhile."""
    with socket.create_connection(("127.0.0.1", awake.port), timeout=30) as slow:
        slow.sendall(b"GET /s/alice/ HTTP/1.1\r\nHost: t\r\nX-Sl")
        assert httpx.get(awake.url("alice")).status_code == 200
        answer = _read_all(slow)
    assert answer.startswith(b"HTTP/1.1 408")


def test_unknown_session_and_missing_prefix_are_404(awake: SiestaProcess) -> None:
    """Requests naming no known session get 404 with the reason."""
    unknown = httpx.get(awake.url("nobody"))
    assert unknown.status_code == 404
    assert "unknown session 'nobody'" in unknown.text
    assert httpx.get(f"{awake.base}/elsewhere").status_code == 404
    redirect = httpx.get(f"{awake.base}/s/alice")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/s/alice/"


def test_many_concurrent_keepalive_clients(awake: SiestaProcess) -> None:
    """50 clients x 20 keep-alive requests each: every response is right."""

    async def client_run() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one() -> list[int]:
                return [(await client.get(awake.url("alice"))).status_code for _ in range(20)]

            results = await asyncio.gather(*(one() for _ in range(50)))
            return [code for codes in results for code in codes]

    codes = asyncio.run(client_run())
    assert codes == [200] * 1000


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    chunks = []
    while part := sock.recv(65536):
        chunks.append(part)
    return b"".join(chunks)


def _backend() -> dict[str, object]:
    return backend_template()


def test_post_body_is_held_with_its_request_while_the_session_wakes(siesta: Launcher) -> None:
    """A 1 MB upload to a sleeping session is buffered (bounded), then delivered whole."""
    run = siesta()
    body = bytes(range(256)) * 4096
    response = httpx.post(run.url("alice", "/echo"), content=body, timeout=30)
    assert response.headers["x-siesta-wake"] == "cold"
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_http_10_client_gets_an_answer_and_a_close(awake: SiestaProcess) -> None:
    """An HTTP/1.0 request without keep-alive is answered, then the connection closes."""
    answer = raw(awake.port, b"GET /s/alice/ HTTP/1.0\r\nHost: t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"hello from alice" in answer


CLOSE_DELIMITED = """
import socket, sys
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = srv.accept()
    data = b""
    while b"\\r\\n\\r\\n" not in data and (part := conn.recv(4096)):
        data += part
    if data:
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nKeep-Alive: x\\r\\n\\r\\n")
        conn.sendall(b"part one, ")
        conn.sendall(b"part two")
    conn.close()
"""


def test_response_ended_by_close_is_rechunked_for_keep_alive_clients(siesta: Launcher) -> None:
    """A backend that ends its body by closing: an HTTP/1.1 client gets it chunked, whole,
    and can reuse its connection; hop-by-hop headers of the backend are not passed on."""
    template = backend_template(
        command=[sys.executable, "-c", CLOSE_DELIMITED, "{port}"], ready={"tcp": True}
    )
    run = siesta(templates={"web": template})
    with httpx.Client(timeout=30) as client:
        first = client.get(run.url("alice"))
        second = client.get(run.url("alice"))
    for response in (first, second):
        assert response.status_code == 200
        assert response.text == "part one, part two"
        assert response.headers["transfer-encoding"] == "chunked"
        assert "keep-alive" not in response.headers
