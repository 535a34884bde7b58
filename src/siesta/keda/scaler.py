"""The External Scaler servicer: KEDA asks, siesta's lifecycle answers.

Used by the app when the config has a `keda` section. Every answer is read from the
lifecycle's sessions (the one owner of state), never from a copy kept here:

- `IsActive`: true while the session is WAKING or AWAKE, or has requests held at the
  gateway. The policy puts a session to sleep, so after that this answers false and
  KEDA scales to zero once its cooldown has passed.
- `StreamIsActive`: one long stream per ScaledObject. It sends `true` once per wake,
  when the lifecycle moves the session into WAKING (a request for a sleeping session,
  or an admin wake): never the current state on connect, so a reconnect sends nothing.
- `GetMetricSpec` / `GetMetrics`: one metric per session, `siesta-<session>`, target
  1, value 1 while active and 0 otherwise (float fields).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc

from siesta.core.model import Session, State

from . import externalscaler_pb2 as pb
from . import externalscaler_pb2_grpc as pb_grpc

log = logging.getLogger("siesta.keda")

SESSION_KEY = "session"  # the trigger metadata key naming the session
ACTIVE_STATES = (State.WAKING, State.AWAKE)
GRACE = 1.0  # seconds open calls get at shutdown before they are cancelled


class Sessions(Protocol):
    """What the servicer reads from the lifecycle."""

    @property
    def listeners(self) -> list[Any]: ...
    def get(self, session_id: str) -> Session | None: ...


def metric_name(session: str) -> str:
    """The one metric of `session`: stable, so KEDA's HPA keeps its name across restarts."""
    return f"siesta-{session}"


def is_active(session: Session) -> bool:
    """Whether the session should have its backend: waking, awake, or requests held."""
    return session.state in ACTIVE_STATES or session.activity.held > 0


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    """`externalscaler.ExternalScaler` over the lifecycle's sessions."""

    def __init__(self, sessions: Sessions, scaled_objects: Mapping[str, str] | None = None):
        self._sessions = sessions
        self._by_object = dict(scaled_objects or {})  # "namespace/name" -> session
        self._streams: dict[str, set[asyncio.Queue[None]]] = {}
        sessions.listeners.append(self._moved)

    def _moved(self, session: Session, old: State, new: State) -> None:
        """A lifecycle listener: wake every stream of `session` on inactive -> active."""
        if new is not State.WAKING or old in ACTIVE_STATES:
            return
        for queue in self._streams.get(session.id, ()):
            if queue.empty():  # a pending `true` already covers this wake
                queue.put_nowait(None)

    async def _session(self, ref: Any, context: Any) -> Session:
        where = f"ScaledObject {ref.namespace}/{ref.name}"
        sid: str | None = ref.scalerMetadata.get(SESSION_KEY) or self._by_object.get(
            f"{ref.namespace}/{ref.name}"
        )
        if not sid:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where}: the trigger's metadata has no {SESSION_KEY!r} key"
                " (and keda.scaled_objects does not name its session)",
            )
        assert sid is not None
        session = self._sessions.get(sid)
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{where}: no session {sid!r}")
        assert session is not None
        return session

    async def IsActive(self, request: Any, context: Any) -> pb.IsActiveResponse:
        session = await self._session(request, context)
        return pb.IsActiveResponse(result=is_active(session))

    async def StreamIsActive(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.IsActiveResponse]:
        session = await self._session(request, context)
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        streams = self._streams.setdefault(session.id, set())
        streams.add(queue)
        try:
            while True:
                await queue.get()
                yield pb.IsActiveResponse(result=True)
        finally:
            streams.discard(queue)
            if not streams and self._streams.get(session.id) is streams:
                del self._streams[session.id]

    async def GetMetricSpec(self, request: Any, context: Any) -> pb.GetMetricSpecResponse:
        session = await self._session(request, context)
        spec = pb.MetricSpec(metricName=metric_name(session.id), targetSize=1, targetSizeFloat=1.0)
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(self, request: Any, context: Any) -> pb.GetMetricsResponse:
        ref = request.scaledObjectRef
        session = await self._session(ref, context)
        name = metric_name(session.id)
        asked = request.metricName
        if asked and asked != name and not asked.endswith(f"-{name}"):  # KEDA may add "s0-"
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"ScaledObject {ref.namespace}/{ref.name}: no metric {asked!r} (it has {name})",
            )
        value = 1 if is_active(session) else 0
        metric = pb.MetricValue(
            metricName=asked or name, metricValue=value, metricValueFloat=float(value)
        )
        return pb.GetMetricsResponse(metricValues=[metric])

    async def StreamMetricSpec(self, request: Any, context: Any) -> None:
        """Not served: KEDA falls back to `GetMetricSpec` (the spec never changes)."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "StreamMetricSpec is not served")

    @property
    def stream_count(self) -> int:
        """Open `StreamIsActive` calls (for tests and metrics)."""
        return sum(len(s) for s in self._streams.values())


class ScalerServer:
    """The gRPC server: start on `listen` (optionally TLS), stop with a short grace."""

    def __init__(self, servicer: ExternalScaler):
        self.servicer = servicer
        self._server: Any = None

    async def start(
        self, host: str, port: int, tls: tuple[Path, Path] | None = None
    ) -> tuple[str, int]:
        """Listen on host:port (0: any free port); return the address bound."""
        server = grpc.aio.server()
        pb_grpc.add_ExternalScalerServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if tls is None:
            bound = server.add_insecure_port(target)
        else:
            cert, key = tls
            creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            bound = server.add_secure_port(target, creds)
        await server.start()
        self._server = server
        log.info("KEDA external scaler listening on %s:%d", host, bound)
        return host, bound

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(GRACE)
            self._server = None
