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
- A session siesta does not know (deleted, or never created): with
  `keda.unknown_sessions: inactive` (the default) it is inactive with metric 0, so
  KEDA scales its workload to zero instead of freezing it, and a log line says so
  (once per session and LOG_UNKNOWN_EVERY); with `error`, every call is NOT_FOUND.

At shutdown every `StreamIsActive` ends with status OK (`close`): KEDA resets its
reconnect backoff only after a clean end, so a restart loses no push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
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
LOG_UNKNOWN_EVERY = 600.0  # seconds between log lines about one unknown session
_WAKE, _END = True, False  # what a stream's queue carries: a wake to push, or the end


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

    def __init__(
        self,
        sessions: Sessions,
        scaled_objects: Mapping[str, str] | None = None,
        *,
        unknown_sessions: str = "inactive",
        clock: Callable[[], float] = time.monotonic,
    ):
        self._sessions = sessions
        self._by_object = dict(scaled_objects or {})  # "namespace/name" -> session
        self._unknown_inactive = unknown_sessions == "inactive"
        self._clock = clock
        self._logged: dict[str, float] = {}  # unknown session -> when it was last logged
        self._streams: dict[str, set[asyncio.Queue[bool]]] = {}
        self._closed = False
        self.drained = asyncio.Event()  # set once closed and every stream has ended
        sessions.listeners.append(self._moved)

    def _moved(self, session: Session, old: State, new: State) -> None:
        """A lifecycle listener: wake every stream of `session` on inactive -> active."""
        if new is not State.WAKING or old in ACTIVE_STATES:
            return
        for queue in self._streams.get(session.id, ()):
            if queue.empty():  # a pending `true` already covers this wake
                queue.put_nowait(_WAKE)

    def close(self) -> None:
        """End every stream cleanly (status OK); new ones end at once."""
        self._closed = True
        for queue in (q for streams in self._streams.values() for q in streams):
            if not queue.empty():
                queue.get_nowait()  # the end replaces a pending `true`: siesta is going
            queue.put_nowait(_END)
        if not self._streams:
            self.drained.set()

    async def _session_id(self, ref: Any, context: Any) -> str:
        sid: str | None = ref.scalerMetadata.get(SESSION_KEY) or self._by_object.get(
            f"{ref.namespace}/{ref.name}"
        )
        if not sid:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"ScaledObject {ref.namespace}/{ref.name}: the trigger's metadata has no "
                f"{SESSION_KEY!r} key (and keda.scaled_objects does not name its session)",
            )
        assert sid is not None
        return sid

    async def _session(self, ref: Any, context: Any) -> tuple[str, Session | None]:
        """The id `ref` names and its session; None for an unknown one (when that is
        inactive, not an error: `unknown_sessions`)."""
        sid = await self._session_id(ref, context)
        session = self._sessions.get(sid)
        if session is not None:
            return sid, session
        where = f"ScaledObject {ref.namespace}/{ref.name}"
        if not self._unknown_inactive:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{where}: no session {sid!r}")
        now = self._clock()
        if now - self._logged.get(sid, -LOG_UNKNOWN_EVERY) >= LOG_UNKNOWN_EVERY:
            self._logged[sid] = now
            log.warning(
                "%s names session %r, which siesta does not know: answered inactive "
                "(metric 0), so KEDA scales it to zero (keda.unknown_sessions: inactive)",
                where,
                sid,
            )
        return sid, None

    async def IsActive(self, request: Any, context: Any) -> pb.IsActiveResponse:
        _, session = await self._session(request, context)
        return pb.IsActiveResponse(result=session is not None and is_active(session))

    async def StreamIsActive(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.IsActiveResponse]:
        sid, _ = await self._session(request, context)
        if self._closed:
            return
        queue: asyncio.Queue[bool] = asyncio.Queue(maxsize=1)
        streams = self._streams.setdefault(sid, set())
        streams.add(queue)
        try:
            while await queue.get() is _WAKE:
                yield pb.IsActiveResponse(result=True)
        finally:
            streams.discard(queue)
            if not streams and self._streams.get(sid) is streams:
                del self._streams[sid]
            if self._closed and not self._streams:
                self.drained.set()

    async def GetMetricSpec(self, request: Any, context: Any) -> pb.GetMetricSpecResponse:
        sid, _ = await self._session(request, context)
        spec = pb.MetricSpec(metricName=metric_name(sid), targetSize=1, targetSizeFloat=1.0)
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(self, request: Any, context: Any) -> pb.GetMetricsResponse:
        ref = request.scaledObjectRef
        sid, session = await self._session(ref, context)
        name = metric_name(sid)
        asked = request.metricName
        if asked and asked != name and not asked.endswith(f"-{name}"):  # KEDA may add "s0-"
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"ScaledObject {ref.namespace}/{ref.name}: no metric {asked!r} (it has {name})",
            )
        value = 1 if session is not None and is_active(session) else 0
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
        """End the streams with status OK, give them GRACE to go out, then stop."""
        if self._server is None:
            return
        self.servicer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.servicer.drained.wait(), GRACE)
        await self._server.stop(GRACE)
        self._server = None
