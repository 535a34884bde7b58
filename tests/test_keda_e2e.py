"""End to end on one machine, with a stand-in for KEDA.

siesta runs in the test's event loop (`siesta.app.Siesta`: real gateway, real gRPC
External Scaler, real controller and SQLite store). `StandInForKeda` is not KEDA: it is
a small asyncio loop that follows KEDA's documented External Scaler semantics for one
ScaledObject with `minReplicaCount: 0`:

- it holds a `StreamIsActive` stream open and scales 0 -> 1 at once on `true`;
- it polls `IsActive` every `POLL` seconds (an active answer also scales 0 -> 1 and
  resets the cooldown);
- once `IsActive` has been false for `COOLDOWN` seconds, it scales 1 -> 0.

Scaling 0 -> 1 starts a local process listening at the session's address
(`python -m http.server PORT --bind 127.0.0.1`); scaling to zero stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from siesta.app import Siesta
from siesta.config import Config
from siesta.core.model import State
from siesta.keda import externalscaler_pb2 as pb
from siesta.keda import externalscaler_pb2_grpc as pb_grpc

from .conftest import free_port, until

POLL = 0.2  # KEDA's pollingInterval, in seconds
COOLDOWN = 1.0  # KEDA's cooldownPeriod, in seconds


class StandInForKeda:
    """A stand-in for KEDA (not KEDA): scales one session's workload between 0 and 1."""

    def __init__(self, scaler: tuple[str, int], port: int, workdir: Path) -> None:
        self._target = f"{scaler[0]}:{scaler[1]}"
        self._port = port
        self._workdir = workdir
        self._ref = pb.ScaledObjectRef(
            name="nb-alice", namespace="sessions", scalerMetadata={"session": "alice"}
        )
        self.process: asyncio.subprocess.Process | None = None
        self.starts: list[str] = []  # why each scale 0 -> 1 happened: "stream" or "poll"
        self.stops = 0
        self.polls = 0
        self.stream_trues = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> StandInForKeda:
        self._channel = grpc.aio.insecure_channel(self._target)
        stub = pb_grpc.ExternalScalerStub(self._channel)
        self._tasks = [
            asyncio.create_task(self._stream(stub)),
            asyncio.create_task(self._poll(stub)),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._scale_to_zero()
        if self._channel is not None:
            await self._channel.close()

    @property
    def replicas(self) -> int:
        return 0 if self.process is None else 1

    async def _scale_up(self, why: str) -> None:
        if self.process is not None:
            return
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "http.server",
            str(self._port),
            "--bind",
            "127.0.0.1",
            cwd=self._workdir,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.starts.append(why)

    async def _scale_to_zero(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()
        self.stops += 1

    async def _stream(self, stub: pb_grpc.ExternalScalerStub) -> None:
        """`external-push`: act on `true` at once; reopen a dropped stream."""
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for message in stub.StreamIsActive(self._ref):
                    if message.result:
                        self.stream_trues += 1
                        await self._scale_up("stream")
            await asyncio.sleep(POLL)

    async def _poll(self, stub: pb_grpc.ExternalScalerStub) -> None:
        """Poll IsActive every POLL seconds; scale to zero after COOLDOWN of inactivity."""
        last_active = time.monotonic()
        while True:
            active = (await stub.IsActive(self._ref)).result
            self.polls += 1
            now = time.monotonic()
            if active:
                last_active = now
                await self._scale_up("poll")
            elif self.replicas and now - last_active >= COOLDOWN:
                await self._scale_to_zero()
            await asyncio.sleep(POLL)


def _config(tmp_path: Path, port: int) -> Config:
    return Config.model_validate(
        {
            "gateway": {
                "listen": f"127.0.0.1:{free_port()}",
                "wake_timeout": "20s",
                "routing": "path",
            },
            "keda": {"listen": f"127.0.0.1:{free_port()}"},
            "store": str(tmp_path / "state" / "state.db"),
            "templates": {
                "nb": {
                    "provider": "keda",
                    "address": f"http://127.0.0.1:{port}",
                    "ready": {"http": "/"},
                    "idle_timeout": "1s",
                    "stop_grace": "1s",
                }
            },
            "sessions": {"alice": {"template": "nb"}},
        }
    )


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Siesta]:
    siesta = Siesta(_config(tmp_path, free_port()), admin=False)
    await siesta.start()
    yield siesta
    await siesta.stop()


async def test_stand_in_for_keda_wakes_serves_and_scales_to_zero(
    app: Siesta, tmp_path: Path
) -> None:
    """A request to a sleeping session is served once the stand-in for KEDA starts the
    workload (once, on the stream's `true`); after the policy puts the session to sleep,
    IsActive turns false and the stand-in scales to zero after its cooldown."""
    assert app.scaler_address is not None
    assert app.address is not None
    address = app.config.templates["nb"].address
    assert address is not None
    port = int(address.rsplit(":", 1)[1])
    session = app.lifecycle.get("alice")
    assert session is not None
    assert session.state is State.ASLEEP

    async with StandInForKeda(app.scaler_address, port, tmp_path) as keda:
        await until(lambda: keda.polls >= 2, 10, "the stand-in's first polls")
        assert keda.replicas == 0
        assert keda.starts == []

        base = f"http://127.0.0.1:{app.address[1]}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            answer = await client.get("/s/alice/")
        assert answer.status_code == 200
        # started once; the stream said `true` once (a poll in flight may act first)
        assert len(keda.starts) == 1
        await until(lambda: keda.stream_trues == 1, 5, "the stream's `true`")
        process = keda.process
        assert process is not None
        pid = process.pid

        # idle_timeout (1s) puts the session to sleep; IsActive turns false; after the
        # cooldown (1s) the stand-in scales to zero and the process is gone.
        await until(lambda: session.state is State.ASLEEP, 10, "the policy's sleep")
        slept = time.monotonic()
        # `stops` counts a scale to zero once its process has been waited for
        await until(lambda: keda.stops == 1, 10, "the scale to zero")
        assert time.monotonic() - slept >= COOLDOWN - 2 * POLL
        assert process.returncode is not None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert len(keda.starts) == 1
        assert keda.stream_trues == 1
        assert keda.stops == 1
