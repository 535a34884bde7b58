"""The KEDA External Scaler: a real grpc.aio client against siesta's real gRPC server.

siesta runs in the test's event loop (`siesta.app.Siesta`, real gateway, real SQLite
store). No Kubernetes here: a session's "Service" is a stand-in, a small HTTP server
on 127.0.0.1 that the test starts when the stream says `true`, as KEDA scaling the
workload from zero would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest

from siesta.app import Siesta
from siesta.config import Config, ConfigError, parse_config
from siesta.controller import Controller
from siesta.core.model import State
from siesta.keda import externalscaler_pb2 as pb
from siesta.keda import externalscaler_pb2_grpc as pb_grpc
from siesta.keda.scaler import ExternalScaler
from siesta.lifecycle import Lifecycle
from siesta.providers.base import StartError
from siesta.providers.keda import KedaProvider, endpoint_of
from siesta.store.sqlite import ThreadedSqlite
from siesta.testing import FakeClock

from .conftest import free_port

QUIET = 0.5  # seconds a stream is watched to show it sends nothing


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"served by the stand-in Service"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # 100 requests arrive at once: the default backlog (5) drops SYNs
    daemon_threads = True


class StandInService:
    """Stands in for the session's Kubernetes Service: listens only while "scaled up"."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: _Server | None = None
        self.starts = 0

    def scale_up(self) -> None:
        if self._server is None:
            self._server = _Server(("127.0.0.1", self.port), _Ok)
            threading.Thread(target=self._server.serve_forever, daemon=True).start()
            self.starts += 1

    def scale_down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def service() -> Iterator[StandInService]:
    """A stand-in for the session's Kubernetes Service, scaled to zero at first."""
    svc = StandInService()
    yield svc
    svc.scale_down()


def _config(tmp_path: Path, service_port: int) -> Config:
    return Config.model_validate(
        {
            "gateway": {
                "listen": f"127.0.0.1:{free_port()}",
                "admin_listen": f"127.0.0.1:{free_port()}",
                "wake_timeout": "20s",
                "routing": "path",
            },
            "keda": {
                "listen": f"127.0.0.1:{free_port()}",
                "scaled_objects": {"sessions/nb-mapped": "alice"},
            },
            "store": str(tmp_path / "state" / "state.db"),
            "templates": {
                "nb": {
                    "provider": "keda",
                    "address": f"http://127.0.0.1:{service_port}",
                    "stop_grace": "1s",
                }
            },
            "sessions": {"alice": {"template": "nb"}, "bob": {"template": "nb"}},
        }
    )


@pytest.fixture
async def app(tmp_path: Path, service: StandInService) -> AsyncIterator[Siesta]:
    """siesta with a keda template whose address is the stand-in Service."""
    siesta = Siesta(_config(tmp_path, service.port), admin=False)
    await siesta.start()
    yield siesta
    await siesta.stop()


@pytest.fixture
async def stub(app: Siesta) -> AsyncIterator[pb_grpc.ExternalScalerStub]:
    """A grpc.aio client of the app's External Scaler."""
    assert app.scaler_address is not None
    host, port = app.scaler_address
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        yield pb_grpc.ExternalScalerStub(channel)


def ref(session: str | None = "alice") -> pb.ScaledObjectRef:
    metadata = {} if session is None else {"session": session}
    return pb.ScaledObjectRef(name="nb-so", namespace="sessions", scalerMetadata=metadata)


class Watch:
    """A `StreamIsActive` call read by a task: its messages land in `results`."""

    def __init__(self, stub: pb_grpc.ExternalScalerStub, session: str = "alice") -> None:
        self.call = stub.StreamIsActive(ref(session))
        self.results: list[bool] = []
        self.arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.call.read()
            if message is grpc.aio.EOF:
                return
            self.results.append(message.result)
            self.arrived.set()

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` messages arrived (at most `timeout` seconds)."""
        async with asyncio.timeout(timeout):
            while len(self.results) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def close(self) -> None:
        self.call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_each_method_for_a_sleeping_session(stub: pb_grpc.ExternalScalerStub) -> None:
    """Asleep: inactive, metric 0; one stable metric with target 1; StreamMetricSpec unserved."""
    assert (await stub.IsActive(ref())).result is False
    spec = await stub.GetMetricSpec(ref())
    assert [(s.metricName, s.targetSizeFloat) for s in spec.metricSpecs] == [("siesta-alice", 1.0)]
    for name in ("", "siesta-alice", "s0-siesta-alice"):
        metrics = await stub.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref(), metricName=name)
        )
        assert [m.metricValueFloat for m in metrics.metricValues] == [0.0]
    assert metrics.metricValues[0].metricName == "s0-siesta-alice"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamMetricSpec(ref()):
            pass
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_active_while_awake(
    app: Siesta, stub: pb_grpc.ExternalScalerStub, service: StandInService
) -> None:
    """Awake: IsActive true, metric 1; after sleeping: false and 0 again."""
    service.scale_up()
    await app.lifecycle.wake("alice", "test")
    assert (await stub.IsActive(ref())).result is True
    metrics = await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref()))
    assert metrics.metricValues[0].metricValueFloat == 1.0
    assert (await stub.IsActive(ref("bob"))).result is False
    assert await app.lifecycle.sleep("alice", "policy")
    assert (await stub.IsActive(ref())).result is False
    metrics = await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref()))
    assert metrics.metricValues[0].metricValueFloat == 0.0


@pytest.mark.parametrize(
    ("session", "code", "words"),
    [
        (None, grpc.StatusCode.INVALID_ARGUMENT, "no 'session' key"),
        ("nobody", grpc.StatusCode.NOT_FOUND, "no session 'nobody'"),
    ],
)
async def test_errors_name_the_scaled_object(
    stub: pb_grpc.ExternalScalerStub, session: str | None, code: grpc.StatusCode, words: str
) -> None:
    """A missing or unknown session is refused by every method, naming the ScaledObject."""
    calls = [
        lambda: stub.IsActive(ref(session)),
        lambda: stub.GetMetricSpec(ref(session)),
        lambda: stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(session))),
        lambda: stub.StreamIsActive(ref(session)).read(),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() is code
        assert "ScaledObject sessions/nb-so" in (caught.value.details() or "")
        assert words in (caught.value.details() or "")


async def test_a_config_mapping_names_the_session_of_a_scaled_object(
    stub: pb_grpc.ExternalScalerStub,
) -> None:
    """A trigger without `session` metadata: keda.scaled_objects maps its namespace/name."""
    mapped = pb.ScaledObjectRef(name="nb-mapped", namespace="sessions")
    assert (await stub.IsActive(mapped)).result is False
    spec = await stub.GetMetricSpec(mapped)
    assert [m.metricName for m in spec.metricSpecs] == ["siesta-alice"]


async def test_unknown_metric_is_not_found(stub: pb_grpc.ExternalScalerStub) -> None:
    """A metric name that is not the session's is NOT_FOUND, naming the right one."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(), metricName="cpu"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "siesta-alice" in (caught.value.details() or "")


async def test_one_true_per_wake_under_100_concurrent_requests(
    app: Siesta, stub: pb_grpc.ExternalScalerStub, service: StandInService
) -> None:
    """100 requests to a sleeping session through the gateway: one `true`, all served."""
    watch = Watch(stub)
    await asyncio.sleep(QUIET)
    assert watch.results == []  # nothing on connect

    async def stand_in_for_keda() -> None:
        await watch.wait(1, timeout=30)
        service.scale_up()  # KEDA scales 0 -> 1 at once on `true`

    keda = asyncio.create_task(stand_in_for_keda())
    assert app.address is not None
    base = f"http://127.0.0.1:{app.address[1]}"
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        answers = await asyncio.gather(*(client.get("/s/alice/") for _ in range(100)))
    assert [a.status_code for a in answers] == [200] * 100
    assert answers[0].text == "served by the stand-in Service"
    await keda
    await asyncio.sleep(QUIET)
    assert watch.results == [True]
    assert service.starts == 1
    await watch.close()


async def test_reconnect_sends_no_true(
    app: Siesta, stub: pb_grpc.ExternalScalerStub, service: StandInService
) -> None:
    """A stream reopened while the session is awake sends nothing; the next wake sends one."""
    service.scale_up()
    await app.lifecycle.wake("alice", "test")
    first = Watch(stub)
    await asyncio.sleep(QUIET)
    await first.close()  # KEDA's connection dropped
    second = Watch(stub)
    await asyncio.sleep(QUIET)
    assert first.results == second.results == []  # no spurious `true` on reconnect
    await app.lifecycle.sleep("alice", "policy")
    await asyncio.sleep(QUIET)
    assert second.results == []  # going to sleep is told by IsActive, not by the stream
    await app.lifecycle.wake("alice", "admin wake")
    await second.wait(1)
    await asyncio.sleep(QUIET)
    assert second.results == [True]
    await second.close()


async def test_1000_streams_with_bounded_memory(
    app: Siesta, stub: pb_grpc.ExternalScalerStub, service: StandInService
) -> None:
    """1,000 open streams cost little memory, and one wake reaches every one of them once."""
    assert app.scaler is not None
    servicer = app.scaler.servicer
    process = psutil.Process()
    before = process.memory_info().rss
    streams = [Watch(stub) for _ in range(1000)]
    for _ in range(100):
        if servicer.stream_count == 1000:
            break
        await asyncio.sleep(0.05)
    assert servicer.stream_count == 1000
    grown = process.memory_info().rss - before
    assert grown < 150 * 2**20, f"1,000 streams took {grown / 2**20:.0f} MiB"
    service.scale_up()
    await app.lifecycle.wake("alice", "test")
    await asyncio.gather(*(s.wait(1) for s in streams))
    await asyncio.sleep(QUIET)
    assert all(s.results == [True] for s in streams)
    await asyncio.gather(*(s.close() for s in streams))
    for _ in range(100):
        if servicer.stream_count == 0:
            break
        await asyncio.sleep(0.05)
    assert servicer.stream_count == 0


async def test_is_active_follows_the_policy_on_a_fake_clock(
    tmp_path: Path, service: StandInService
) -> None:
    """A real lifecycle and controller on a fake clock: awake -> IsActive true; past
    idle_timeout the controller puts the session to sleep -> IsActive false."""
    config = Config.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "templates": {
                "nb": {
                    "provider": "keda",
                    "address": f"http://127.0.0.1:{service.port}",
                    "ready": {"http": "/"},
                    "idle_timeout": "15m",
                    "stop_grace": "1s",
                }
            },
            "keda": {"listen": "127.0.0.1:9090"},
            "sessions": {"alice": {"template": "nb"}},
        }
    )
    clock = FakeClock()
    store = ThreadedSqlite(config.store_path)
    provider = KedaProvider(config.templates)
    lifecycle = Lifecycle(config.templates, store, provider, clock=clock)
    await lifecycle.start(config.sessions)
    controller = Controller(lifecycle, config.template_policies(), provider=provider, clock=clock)
    servicer = ExternalScaler(lifecycle)
    try:
        assert (await servicer.IsActive(ref(), None)).result is False
        service.scale_up()  # the workload KEDA would scale up answers at the address
        session = await lifecycle.wake("alice", "test")
        assert session.state is State.AWAKE
        assert (await servicer.IsActive(ref(), None)).result is True
        clock.advance(15 * 60 - 0.1)
        assert await controller.tick() == []
        assert (await servicer.IsActive(ref(), None)).result is True
        clock.advance(0.1)
        assert await controller.tick() == ["alice"]
        await controller.close()
        assert session.state is State.ASLEEP
        assert (await servicer.IsActive(ref(), None)).result is False
        metrics = await servicer.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref()), None)
        assert metrics.metricValues[0].metricValueFloat == 0.0
    finally:
        await controller.close()
        await lifecycle.shutdown()
        await store.close()


def test_endpoint_from_address() -> None:
    """The address's host and port, {session} filled in; the scheme's port by default."""
    address = "http://nb-{session}.sessions.svc:8888"
    assert tuple(endpoint_of(address, "alice")) == ("nb-alice.sessions.svc", 8888)
    assert tuple(endpoint_of("https://x.svc", "a")) == ("x.svc", 443)
    with pytest.raises(StartError):
        endpoint_of("nb-{session}", "a")


def test_keda_template_needs_an_address(tmp_path: Path) -> None:
    """A keda template without address, or with a command, is refused at its key."""
    text = (
        "templates:\n  nb: {provider: keda}\n"
        "  k: {provider: keda, address: 'http://a:1', command: [x]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="s.yaml", base_dir=tmp_path)
    problems = " | ".join(caught.value.problems)
    assert "templates.nb.address: is required by provider keda" in problems
    assert "templates.k.command: not used by provider keda" in problems


def test_keda_section(tmp_path: Path) -> None:
    """`keda` is optional; its listen is host:port."""
    config = parse_config(
        "keda: {listen: '0.0.0.0:9090'}\ntemplates: {web: {command: [x]}}\n", base_dir=tmp_path
    )
    assert config.keda is not None
    assert config.keda.address == ("0.0.0.0", 9090)
    assert parse_config("templates: {web: {command: [x]}}\n", base_dir=tmp_path).keda is None
    with pytest.raises(ConfigError):
        parse_config("keda: {listen: nope}\ntemplates: {web: {command: [x]}}\n", base_dir=tmp_path)
