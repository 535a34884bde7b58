"""The KEDA path when things go wrong: restarts, backends that hang or go away, DNS, the
end of streams, session ids too long for Kubernetes, and timely sleeps.

siesta runs in the test's event loop (`siesta.app.Siesta`: real gateway, real gRPC
External Scaler, real controller and SQLite store). No Kubernetes: the session's
"Service" is `StandInService` (a real HTTP server on 127.0.0.1 the test starts and
stops as KEDA scaling the workload would), or a raw socket that accepts and never
answers.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from siesta.app import Siesta
from siesta.config import Config, ConfigError, parse_config
from siesta.core.model import State
from siesta.keda import externalscaler_pb2_grpc as pb_grpc
from siesta.store.sqlite import SqliteStore

from .admin import TOKEN, client
from .conftest import free_port
from .test_keda import StandInService, ref

WAKE_TIMEOUT = 2.0


def _config(tmp_path: Path, address: str, **template: Any) -> Config:
    return Config.model_validate(
        {
            "gateway": {
                "listen": f"127.0.0.1:{free_port()}",
                "admin_listen": f"127.0.0.1:{free_port()}",
                "wake_timeout": f"{WAKE_TIMEOUT:g}s",
            },
            "keda": {"listen": f"127.0.0.1:{free_port()}"},
            "store": str(tmp_path / "state" / "state.db"),
            "templates": {
                "nb": {
                    "provider": "keda",
                    "address": address,
                    "ready": {"http": "/"},
                    "stop_grace": "1s",
                    **template,
                }
            },
            "sessions": {"alice": {"template": "nb"}, "bob": {"template": "nb"}},
        }
    )


@pytest.fixture
def service() -> Iterator[StandInService]:
    """A stand-in for the session's Kubernetes Service, scaled to zero at first."""
    svc = StandInService()
    yield svc
    svc.scale_down()


async def _stub(app: Siesta) -> tuple[grpc.aio.Channel, pb_grpc.ExternalScalerStub]:
    assert app.scaler_address is not None
    host, port = app.scaler_address
    channel = grpc.aio.insecure_channel(f"{host}:{port}")
    return channel, pb_grpc.ExternalScalerStub(channel)


def _base(app: Siesta) -> str:
    assert app.address is not None
    return f"http://127.0.0.1:{app.address[1]}"


async def _wake_alice_then_stop(config: Config, service: StandInService) -> None:
    """A first siesta: alice's workload up, alice woken, then a clean shutdown."""
    service.scale_up()
    first = Siesta(config, admin=False)
    await first.start()
    await first.lifecycle.wake("alice", "test")
    await first.stop()


async def test_awake_sessions_stay_awake_across_a_restart(
    tmp_path: Path, service: StandInService
) -> None:
    """alice is awake when siesta stops cleanly: her workload is not siesta's to stop,
    so it runs on; the next siesta probes her address and adopts her, and IsActive says
    true before anything else happens. bob was asleep and stays so."""
    config = _config(tmp_path, f"http://127.0.0.1:{service.port}")
    await _wake_alice_then_stop(config, service)
    records = {r.id: r for r in _stored(config)}
    assert records["alice"].state is State.AWAKE

    second = Siesta(config, admin=False)
    await second.start()
    try:
        channel, stub = await _stub(second)
        async with channel:
            assert (await stub.IsActive(ref("alice"))).result is True
            assert (await stub.IsActive(ref("bob"))).result is False
        alice = second.lifecycle.get("alice")
        assert alice is not None
        assert alice.state is State.AWAKE
        async with httpx.AsyncClient(base_url=_base(second), timeout=10) as http:
            answer = await http.get("/s/alice/")
        assert answer.status_code == 200
        assert answer.headers["X-Siesta-Wake"] == "warm"
    finally:
        await second.stop()


async def test_an_awake_session_whose_workload_is_gone_restarts_asleep(
    tmp_path: Path, service: StandInService
) -> None:
    """Adoption probes the address: nothing answers, so the session is asleep again."""
    config = _config(tmp_path, f"http://127.0.0.1:{service.port}")
    await _wake_alice_then_stop(config, service)
    service.scale_down()
    second = Siesta(config, admin=False)
    began = time.monotonic()
    await second.start()
    try:
        assert time.monotonic() - began < 5.0  # one bounded probe, not a wake timeout
        alice = second.lifecycle.get("alice")
        assert alice is not None
        assert alice.state is State.ASLEEP
    finally:
        await second.stop()


class Silent:
    """Accepts connections and never answers (a pod whose app hangs): not a real Service."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Silent:
        self.sock.setblocking(False)
        self._task = asyncio.create_task(self._accept())
        return self

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            self.held.append(conn)  # kept open, never read, never written

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        for conn in self.held:
            conn.close()
        self.sock.close()


async def test_an_address_that_never_answers_gives_503_in_time(tmp_path: Path) -> None:
    """The readiness probe connects and waits at most 1s for an answer: the held request
    gets 503 with Retry-After within wake_timeout + 1s, and the session is not left
    WAKING."""
    async with Silent() as silent:
        app = Siesta(_config(tmp_path, f"http://127.0.0.1:{silent.port}"), admin=False)
        await app.start()
        try:
            async with httpx.AsyncClient(base_url=_base(app), timeout=30) as http:
                began = time.monotonic()
                answer = await http.get("/s/alice/")
                took = time.monotonic() - began
            assert answer.status_code == 503
            assert "Retry-After" in answer.headers
            assert took <= WAKE_TIMEOUT + 1.0, took
            assert silent.held, "the probe never connected"
            alice = app.lifecycle.get("alice")
            assert alice is not None
            for _ in range(100):  # the wake's own end comes within a probe's timeout
                if alice.state is not State.WAKING:
                    break
                await asyncio.sleep(0.02)
            assert alice.state in (State.ASLEEP, State.FAILED)
        finally:
            await app.stop()


async def test_a_waking_session_resolves_its_address_once(
    tmp_path: Path, service: StandInService
) -> None:
    """The address is a host name; the workload takes 1.5s to come up. Readiness probes
    go out every 250ms at most, and the name is looked up once for the wake: at most
    10 lookups a second, counted at the event loop's resolver."""
    app = Siesta(_config(tmp_path, f"http://localhost:{service.port}"), admin=False)
    await app.start()
    loop = asyncio.get_running_loop()
    lookups: list[float] = []
    resolve = loop.getaddrinfo

    async def counted(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "localhost":
            lookups.append(time.monotonic())
        return await resolve(host, *args, **kwargs)

    loop.getaddrinfo = counted  # type: ignore[method-assign]
    try:
        loop.call_later(1.5, service.scale_up)
        async with httpx.AsyncClient(base_url=_base(app), timeout=30) as http:
            began = time.monotonic()
            answer = await http.get("/s/alice/")
            took = time.monotonic() - began
        assert answer.status_code == 200
        assert len(lookups) <= 10 * took, (len(lookups), took)
        assert 1 <= len(lookups) <= 3  # the wake, and the forwarded request's connection
    finally:
        loop.getaddrinfo = resolve  # type: ignore[method-assign]
        await app.stop()


async def test_streams_end_with_ok_at_shutdown(tmp_path: Path, service: StandInService) -> None:
    """An open StreamIsActive ends with status OK when siesta stops (KEDA then reconnects
    at once, without backing off)."""
    app = Siesta(_config(tmp_path, f"http://127.0.0.1:{service.port}"), admin=False)
    await app.start()
    channel, stub = await _stub(app)
    async with channel:
        call = stub.StreamIsActive(ref("alice"))
        assert app.scaler is not None
        for _ in range(200):
            if app.scaler.servicer.stream_count == 1:
                break
            await asyncio.sleep(0.01)
        assert app.scaler.servicer.stream_count == 1
        await app.stop()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK


async def test_a_refused_connection_after_a_wake_is_held_not_502(
    tmp_path: Path, service: StandInService
) -> None:
    """The workload went away after the wake (a pod terminating as KEDA scaled to zero):
    a request is held while readiness is checked again, and served by the next pod."""
    app = Siesta(_config(tmp_path, f"http://127.0.0.1:{service.port}"), admin=False)
    await app.start()
    try:
        service.scale_up()
        await app.lifecycle.wake("alice", "test")
        service.scale_down()
        asyncio.get_running_loop().call_later(0.5, service.scale_up)
        async with httpx.AsyncClient(base_url=_base(app), timeout=30) as http:
            answer = await http.get("/s/alice/")
        assert answer.status_code == 200, answer.text
        assert answer.text == "served by the stand-in Service"
        service.scale_down()  # and nothing comes back in time: 503, never 502
        async with httpx.AsyncClient(base_url=_base(app), timeout=30) as http:
            answer = await http.get("/s/alice/", headers={"Connection": "close"})
        assert answer.status_code == 503
        assert "Retry-After" in answer.headers
    finally:
        await app.stop()


class _Gateway(BaseHTTPRequestHandler):
    """Stands in for what sits at a Service's address (an ingress, a mesh sidecar): 502
    while no pod is behind it, 200 from the pod once there is one."""

    bad = True

    def do_GET(self) -> None:
        status, body = (502, b"no healthy upstream") if self.bad else (200, b"the next pod")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_502_after_a_wake_is_held_not_passed_on(tmp_path: Path) -> None:
    """The address answers 502 after the wake (the pod behind it terminating): the request
    is held while readiness is checked again and served once a pod answers; when none
    does within wake_timeout, the answer is 503 with Retry-After, never the 502."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Gateway.bad = False
    app = Siesta(_config(tmp_path, f"http://127.0.0.1:{server.server_port}"), admin=False)
    await app.start()
    try:
        await app.lifecycle.wake("alice", "test")
        _Gateway.bad = True
        asyncio.get_running_loop().call_later(0.5, setattr, _Gateway, "bad", False)
        async with httpx.AsyncClient(base_url=_base(app), timeout=30) as http:
            answer = await http.get("/s/alice/")
            assert answer.status_code == 200, answer.text
            assert answer.text == "the next pod"
            _Gateway.bad = True  # and no pod comes back in time
            began = time.monotonic()
            answer = await http.get("/s/alice/")
            assert answer.status_code == 503, answer.text
            assert "Retry-After" in answer.headers
            assert time.monotonic() - began <= WAKE_TIMEOUT + 1.0
        assert app.lifecycle.sessions["alice"].state is State.AWAKE
    finally:
        await app.stop()
        server.shutdown()
        server.server_close()


async def test_a_connections_rule_turns_inactive_within_a_second(
    tmp_path: Path, service: StandInService
) -> None:
    """idle_for > 2s && connections == 0 && inflight == 0 on a keda template: IsActive
    turns false within 2s + 1s of the last request ending, though check_every is 30s."""
    config = Config.model_validate(
        {
            **_config(tmp_path, f"http://127.0.0.1:{service.port}").model_dump(
                exclude={"templates", "policies"}, mode="json"
            ),
            "templates": {
                "nb": {
                    "provider": "keda",
                    "address": f"http://127.0.0.1:{service.port}",
                    "policy": "quiet",
                }
            },
            "policies": {
                "quiet": {
                    "sleep_when": 'idle_for > duration("2s") && connections == 0 && inflight == 0'
                }
            },
        }
    )
    service.scale_up()
    app = Siesta(config, admin=False)
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=_base(app), timeout=30) as http:
            assert (await http.get("/s/alice/")).status_code == 200
        ended = time.time()
        alice = app.lifecycle.get("alice")
        assert alice is not None
        channel, stub = await _stub(app)
        async with channel:
            for _ in range(400):
                if not (await stub.IsActive(ref("alice"))).result:
                    break
                await asyncio.sleep(0.02)
            assert not (await stub.IsActive(ref("alice"))).result
        events = await app.store.events("alice")
        stopping = next(e for e in events if e.new is State.STOPPING)
        assert ended + 2.0 - 0.05 <= stopping.at <= ended + 3.0, stopping.at - ended
    finally:
        await app.stop()


def test_session_ids_too_long_for_kubernetes_are_refused(tmp_path: Path) -> None:
    """keda-hpa-nb-<id> over 63 characters, or an id that is no DNS label: refused at load
    with the session's line."""
    long = "a" * 52
    text = (
        "keda: {listen: '127.0.0.1:9090'}\n"
        "templates:\n"
        "  nb: {provider: keda, address: 'http://nb-{session}.sessions.svc:8888'}\n"
        "sessions:\n"
        f"  {'a' * 51}: {{template: nb}}\n"
        f"  {long}: {{template: nb}}\n"
        "  Bob_1: {template: nb}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="siesta.yaml", base_dir=tmp_path)
    assert caught.value.problems == [
        f"siesta.yaml:6 sessions.{long}: session '{long}' is too long: KEDA would name its "
        f"HPA 'keda-hpa-nb-{long}' (64 characters, over Kubernetes' 63); use at most 51",
        "siesta.yaml:7 sessions.Bob_1: session 'Bob_1' would name the Service 'nb-Bob_1', "
        "which must be lowercase letters, digits and '-' (a DNS label)",
    ]


async def test_the_api_refuses_a_session_id_too_long_for_kubernetes(
    tmp_path: Path, service: StandInService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /api/sessions for a keda template: 422 naming the generated name; 201 when
    it fits."""
    monkeypatch.setenv("SIESTA_ADMIN_TOKEN", TOKEN)
    app = Siesta(_config(tmp_path, "http://nb-{session}.sessions.svc:8888"))
    await app.start()
    try:
        assert app.admin_address is not None
        host, port = app.admin_address
        base = f"http://{host}:{port}"
        loop = asyncio.get_running_loop()

        def create(sid: str) -> httpx.Response:
            with client(base) as api:
                return api.post("/api/sessions", json={"id": sid, "template": "nb"})

        refused = await loop.run_in_executor(None, create, "b" * 52)
        assert refused.status_code == 422
        assert "keda-hpa-nb-" in refused.json()["error"]
        created = await loop.run_in_executor(None, create, "b" * 51)
        assert created.status_code == 201, created.text
    finally:
        await app.stop()


def _stored(config: Config) -> list[Any]:
    """The sessions the store of `config` holds (opened and closed here)."""
    store = SqliteStore(config.store_path)
    try:
        return list(store.sessions())
    finally:
        store.close()
