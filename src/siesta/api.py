"""The admin API (Starlette) and `/metrics`, on a second listener.

`siesta.app` builds an `AdminServer` and runs it inside siesta's own event loop;
the CLI (`siesta.adminclient`) and operators' tools call it. Every `/api/` route
needs `Authorization: Bearer <token>`; `/healthz`, `/metrics` and `/openapi.json`
are open. It reads and changes sessions only through the lifecycle, and reads
events from the store. Errors are JSON: `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from siesta import ledger
from siesta.adminclient import TOKEN_ENV, TOKEN_FILE
from siesta.config import NAME_PATTERN, Config
from siesta.core.duration import format_duration
from siesta.core.model import Session, State, Transition
from siesta.core.policy import SIGNALS, Decision, EvaluationError, Policy, Rule, Signals
from siesta.health import Health
from siesta.lifecycle import Lifecycle, SessionExists, UnknownTemplate, WakeError
from siesta.metrics import SiestaMetrics
from siesta.store.base import Store

log = logging.getLogger("siesta.api")

OPEN_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})
KEEPALIVE_EVERY = 15.0  # seconds between SSE comments: under common 30-60s proxy idle timeouts
STREAM_BACKLOG = 10_000  # events queued for one slow SSE client before its stream is ended
MAX_EVENTS = 10_000  # most events one GET /api/events returns
_NAME = re.compile(NAME_PATTERN)
_NAME_RULE = "must be 1 to 63 letters, digits, '_' or '-', starting with a letter or digit"


class AdminListenError(OSError):
    """The admin listener could not bind `gateway.admin_listen`."""


# -- the token ----------------------------------------------------------------------


def load_token(state_dir: Path, environ: Mapping[str, str]) -> tuple[str, bool]:
    """The admin token, and whether it was just created.

    `SIESTA_ADMIN_TOKEN` wins; else the state folder's token file is read, or
    created (mode 0600) with a new random token.
    """
    given = environ.get(TOKEN_ENV, "").strip()
    if given:
        return given, False
    path = state_dir / TOKEN_FILE
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = path.read_text().strip()
        if existing:
            return existing, False
        path.unlink()  # an empty file (a crash while writing): start again
        return load_token(state_dir, environ)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token, True


class _BearerAuth:
    """ASGI middleware: every path but `OPEN_PATHS` needs the bearer token."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                why = "wrong admin token" if given else "missing admin token"
                response = JSONResponse(
                    {"error": f"{why}: send Authorization: Bearer <token>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- the event stream ---------------------------------------------------------------


class _Subscription:
    """Events for one SSE client, queued until it takes them."""

    def __init__(self, session: str | None):
        self.session = session
        self.pending: deque[Transition] = deque()
        self.ready = asyncio.Event()
        self.closed = False

    def push(self, event: Transition) -> None:
        if self.session is not None and event.session != self.session:
            return
        if len(self.pending) >= STREAM_BACKLOG:
            self.closed = True  # a client this far behind reconnects with Last-Event-ID
        else:
            self.pending.append(event)
        self.ready.set()

    async def take(self, timeout: float) -> list[Transition]:
        """What arrived, waiting at most `timeout` seconds for something."""
        if not self.pending and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), timeout)
        self.ready.clear()
        taken = list(self.pending)
        self.pending.clear()
        return taken

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class EventHub:
    """Fans the lifecycle's events out to the SSE clients (a lifecycle observer)."""

    def __init__(self, lifecycle: Lifecycle):
        self._subscriptions: set[_Subscription] = set()
        lifecycle.observers.append(self.publish)

    def publish(self, event: Transition) -> None:
        for subscription in self._subscriptions:
            subscription.push(event)

    @contextlib.contextmanager
    def subscribe(self, session: str | None) -> Iterator[_Subscription]:
        subscription = _Subscription(session)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every stream (siesta is stopping)."""
        for subscription in self._subscriptions:
            subscription.close()


# -- JSON shapes ----------------------------------------------------------------------


def session_json(session: Session, now: float, next_due: float | None) -> dict[str, Any]:
    """A session as the API shows it; `now` and `next_due` are monotonic."""
    activity = session.activity
    awake = session.state is State.AWAKE
    return {
        "id": session.id,
        "template": session.template,
        "labels": session.labels,
        "state": session.state.value,
        "endpoint": str(session.endpoint) if session.endpoint else None,
        "pid": session.pid,
        "created": session.created,
        "awake_for": now - session.awake_since if session.awake_since is not None else None,
        "idle_for": now - activity.last_activity if awake and activity.last_activity else None,
        "next_check_in": max(0.0, next_due - now) if awake and next_due is not None else None,
        "connections": activity.connections,
        "inflight": activity.inflight,
        "held": activity.held,
        "requests": activity.requests,
        "bytes": activity.bytes,
        "failures": session.failures,
        "retry_in": max(0.0, session.retry_at - now) if session.state is State.FAILED else None,
    }


def event_json(event: Transition) -> dict[str, Any]:
    """An event as the API shows it."""
    return {
        "session": event.session,
        "at": event.at,
        "old": event.old.value,
        "new": event.new.value,
        "reason": event.reason,
        "wake_seconds": event.wake_seconds,
    }


def usage_json(usage: ledger.Usage) -> dict[str, Any]:
    """A ledger entry as the API shows it."""
    return {
        "awake_seconds": usage.awake_seconds,
        "asleep_seconds": usage.asleep_seconds,
        "always_on_seconds": usage.always_on_seconds,
        "saved_fraction": usage.saved_fraction,
        "wakes": usage.wakes,
        "sleeps": usage.sleeps,
    }


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(max(1, math.ceil(extra["retry_after"])))
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("admin API: %s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


# -- policy explain -----------------------------------------------------------------


@runtime_checkable
class PolicySource(Protocol):
    """What `explain` needs of the controller (which this module must not import)."""

    def policy_of(self, session: Session) -> Policy: ...

    def next_due(self, session_id: str) -> float | None: ...

    async def current_signals(self, session_id: str) -> Signals | None: ...


def explanation(
    session: Session, policy: Policy, signals: Signals | None, next_due: float | None
) -> dict[str, Any]:
    """The answer of `GET /api/sessions/{id}/explain`.

    `signals` is None unless the session is awake (a sleeping session is not checked);
    `next_due` is the controller's next check (monotonic, on the clock of `signals.at`).
    """
    answer: dict[str, Any] = {
        "session": session.id,
        "template": session.template,
        "state": session.state.value,
        "policy": policy.name,
        "signals": None,
        "rules": [_limit_json(policy, k, signals) for k in _LIMITS if _has_limit(policy, k)]
        + [_rule_json(rule, signals) for rule in _ordered(policy)],
        "decision": None,
        "note": None,
    }
    if signals is None:
        answer["note"] = (
            f"the session is {session.state.value}: its policy is checked only while it is "
            "awake, so there are no signal values; the next request wakes it"
        )
        return answer
    answer["signals"] = {name: _plain(getattr(signals, name)) for name in SIGNALS}
    try:
        decision = policy.evaluate(signals)
    except EvaluationError as exc:
        answer["note"] = f"a rule failed to run, so the session is kept awake: {exc}"
        return answer
    answer["decision"] = _decision_json(policy, decision, signals, next_due)
    return answer


_LIMITS = ("max_lifetime", "min_awake")
_EFFECT = {
    "max_lifetime": "sleep, whatever else holds",
    "min_awake": "stay awake",
    "keep_awake_when": "stay awake, whatever sleep_when says",
    "sleep_when": "sleep",
}


def _has_limit(policy: Policy, key: str) -> bool:
    return policy.max_lifetime is not None if key == "max_lifetime" else policy.min_awake > 0


def _ordered(policy: Policy) -> list[Rule]:
    """The rules in the order `Policy.evaluate` looks at them."""
    keep = policy.keep_awake_when
    return [policy.sleep_when] if keep is None else [keep, policy.sleep_when]


def _limit_json(policy: Policy, key: str, signals: Signals | None) -> dict[str, Any]:
    if key == "max_lifetime":
        limit, op = policy.max_lifetime or 0.0, ">="
        holds = None if signals is None else signals.awake_for + 1e-6 >= limit
    else:
        limit, op = policy.min_awake, "<"
        holds = None if signals is None else signals.awake_for + 1e-6 < limit
    return {
        "key": key,
        "source": f"awake_for {op} {format_duration(limit)}",
        "effect": _EFFECT[key],
        "values": {} if signals is None else {"awake_for": signals.awake_for},
        "holds": holds,
        "error": None,
    }


def _rule_json(rule: Rule, signals: Signals | None) -> dict[str, Any]:
    holds: bool | None = None
    error = None
    if signals is not None:
        try:
            holds = rule.holds(signals)
        except EvaluationError as exc:
            error = str(exc)
    return {
        "key": rule.key,
        "source": " ".join(rule.source.split()),
        "effect": _EFFECT.get(rule.key, "sleep"),
        "values": {}
        if signals is None
        else {name: _plain(getattr(signals, name)) for name in rule.variables},
        "holds": holds,
        "error": error,
    }


def _decision_json(
    policy: Policy, decision: Decision, signals: Signals, next_due: float | None
) -> dict[str, Any]:
    """The decision, with its times relative to the reading (seconds) and as wall clock."""
    wall = signals.now.timestamp()
    sleep_in = None if decision.sleep_at is None else max(0.0, decision.sleep_at - signals.at)
    check_in = None if next_due is None else max(0.0, next_due - signals.at)
    warn_in = None
    if policy.warn is not None and sleep_in is not None:
        warn_in = max(0.0, sleep_in - policy.warn.before)
    return {
        "sleep": decision.sleep,
        "reason": decision.reason,
        "sleep_in": sleep_in,
        "sleep_at": None if sleep_in is None else wall + sleep_in,
        "next_check_in": check_in,
        "warn_in": warn_in,
        "check_every": None if policy.predictable else policy.check_every,
    }


def _plain(value: Any) -> Any:
    """A signal's value as JSON: durations in seconds, times in ISO 8601, maps as objects."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# -- the endpoints ------------------------------------------------------------------


class AdminApi:
    """The routes, over the lifecycle, the store and the metrics."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        store: Store,
        metrics: SiestaMetrics,
        hub: EventHub,
        controller: Callable[[], object | None],
        health: Health | None = None,
    ):
        self.lifecycle = lifecycle
        self.store = store
        self.health = health or lifecycle.health
        self.metrics = metrics
        self.hub = hub
        self._controller = controller

    def app(self, token: str) -> Starlette:
        """The ASGI app, with `token` required on every `/api/` route."""
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/sessions", self.list_sessions, methods=["GET"]),
            Route("/api/sessions", self.create_session, methods=["POST"]),
            Route("/api/sessions/{id}", self.get_session, methods=["GET"]),
            Route("/api/sessions/{id}", self.delete_session, methods=["DELETE"]),
            Route("/api/sessions/{id}/wake", self.wake, methods=["POST"]),
            Route("/api/sessions/{id}/sleep", self.sleep, methods=["POST"]),
            Route("/api/sessions/{id}/explain", self.explain, methods=["GET"]),
            Route("/api/events", self.events, methods=["GET"]),
            Route("/api/events/stream", self.stream, methods=["GET"]),
            Route("/api/savings", self.savings, methods=["GET"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(_BearerAuth, token=token)],
            exception_handlers={HTTPException: _http_error, Exception: _server_error},
        )

    def _session(self, request: Request) -> Session:
        sid = request.path_params["id"]
        session = self.lifecycle.get(sid)
        if session is None:
            raise HTTPException(404, f"no session {sid!r}")
        return session

    def _json(self, session: Session) -> dict[str, Any]:
        next_due = getattr(self._controller(), "next_due", None)
        due = next_due(session.id) if callable(next_due) else None
        return session_json(session, time.monotonic(), due if isinstance(due, float) else None)

    async def healthz(self, request: Request) -> Response:
        """Liveness (200 while siesta runs), with each dependency's mode: a degraded
        store is reported here, not by failing the probe (siesta still serves)."""
        report = self.health.report()
        report["sessions"] = len(self.lifecycle.sessions)
        report["pending_writes"] = self.lifecycle.recorder.pending
        return JSONResponse(report)

    async def prometheus(self, request: Request) -> Response:
        """Prometheus text exposition of `siesta.metrics`."""
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI 3.1 description of this API."""
        return JSONResponse(OPENAPI)

    async def list_sessions(self, request: Request) -> Response:
        sessions = sorted(self.lifecycle.sessions.values(), key=lambda s: s.id)
        return JSONResponse([self._json(s) for s in sessions])

    async def get_session(self, request: Request) -> Response:
        return JSONResponse(self._json(self._session(request)))

    async def create_session(self, request: Request) -> Response:
        body = await _body(request)
        sid, template, labels = body.get("id"), body.get("template"), body.get("labels", {})
        if not isinstance(sid, str) or not _NAME.match(sid):
            return _error(422, f"id {_NAME_RULE}")
        if not isinstance(template, str):
            return _error(422, "template must be the name of a configured template")
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            return _error(422, "labels must be a mapping of strings to strings")
        try:
            session = await self.lifecycle.add_session(sid, template, labels)
        except SessionExists as exc:
            return _error(409, str(exc))
        except UnknownTemplate as exc:
            return _error(422, str(exc))
        return JSONResponse(self._json(session), status_code=201)

    async def delete_session(self, request: Request) -> Response:
        session = self._session(request)
        try:
            await self.lifecycle.remove_session(session.id, "session deleted through the admin API")
        except KeyError:
            return _error(404, f"no session {session.id!r}")
        self.metrics.retire(session)
        return JSONResponse({"deleted": session.id})

    async def wake(self, request: Request) -> Response:
        session = self._session(request)
        try:
            await self.lifecycle.wake(session.id, "woken through the admin API")
        except WakeError as exc:
            return _error(503, str(exc), retry_after=exc.retry_after)
        return JSONResponse(self._json(session))

    async def sleep(self, request: Request) -> Response:
        session = self._session(request)
        if session.state is State.WAKING:
            return _error(409, f"session {session.id!r} is waking; put it to sleep once awake")
        if session.state is State.AWAKE:
            await self.lifecycle.sleep(session.id, "put to sleep through the admin API")
        status = 202 if session.state is State.STOPPING else 200
        return JSONResponse(self._json(session), status_code=status)

    async def explain(self, request: Request) -> Response:
        """Each rule of the session's policy, the signals it reads, whether it holds."""
        session = self._session(request)
        controller = self._controller()
        if not isinstance(controller, PolicySource):
            return _error(503, "the controller is not running yet")
        policy = controller.policy_of(session)
        signals = await controller.current_signals(session.id)
        return JSONResponse(explanation(session, policy, signals, controller.next_due(session.id)))

    async def events(self, request: Request) -> Response:
        session, since = request.query_params.get("session"), _since(request)
        limit = _whole(request, "limit", 1000)
        if not 1 <= limit <= MAX_EVENTS:
            return _error(422, f"limit must be 1 to {MAX_EVENTS}")
        try:
            found = await self.store.events(session or None, since, limit)
        except Exception as exc:
            return _error(
                503, f"the {self.store.kind} store cannot be read: {exc}", retry_after=5.0
            )
        return JSONResponse([event_json(e) for e in found])

    async def stream(self, request: Request) -> Response:
        session = request.query_params.get("session") or None
        since = _since(request)
        if since is None and "last-event-id" in request.headers:
            since = _float(request.headers["last-event-id"], "Last-Event-ID")
        return StreamingResponse(
            self._sse(session, since),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(self, session: str | None, since: float | None) -> AsyncIterator[str]:
        with self.hub.subscribe(session) as subscription:
            yield "retry: 1000\n\n"
            sent: set[Transition] = set()
            if since is not None:
                for event in await self._backlog(session, since):
                    sent.add(event)
                    yield _sse_event(event)
            while not subscription.closed:
                events = await subscription.take(KEEPALIVE_EVERY)
                for event in events:
                    if event not in sent:
                        yield _sse_event(event)
                sent.clear()  # the backlog overlaps only the first batch
                if not events:
                    yield ": keep-alive\n\n"

    async def _backlog(self, session: str | None, since: float) -> list[Transition]:
        """Stored events after `since` for a stream that resumes; none when the store
        cannot be read (the live events still flow)."""
        try:
            return await self.store.events(session, since, MAX_EVENTS)
        except Exception as exc:
            log.warning("event stream: the backlog could not be read: %s", exc)
            return []

    async def savings(self, request: Request) -> Response:
        """Per session and in total: awake, asleep and always-on seconds."""
        now = time.time()
        since = {s.id: s.created for s in self.lifecycle.sessions.values() if s.created > 0}
        try:
            stored = await self.store.events(limit=2**62)
        except Exception as exc:
            return _error(
                503, f"the {self.store.kind} store cannot be read: {exc}", retry_after=5.0
            )
        events = [e for e in stored if e.session in since]
        per = ledger.usage(events, now, since)
        return JSONResponse(
            {
                "at": now,
                "sessions": {sid: usage_json(u) for sid, u in sorted(per.items())},
                "total": usage_json(ledger.total(per.values())),
            }
        )


def _sse_event(event: Transition) -> str:
    return f"id: {event.at!r}\nevent: transition\ndata: {json.dumps(event_json(event))}\n\n"


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return body


def _since(request: Request) -> float | None:
    value = request.query_params.get("since")
    return None if not value else _float(value, "since")


def _float(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise HTTPException(422, f"{name} must be a number (seconds since the epoch)") from None
    if not math.isfinite(number):
        raise HTTPException(422, f"{name} must be a finite number")
    return number


def _whole(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise HTTPException(422, f"{name} must be a whole number") from None


# -- the server ---------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handlers: siesta's own loop handles SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminServer:
    """The admin API's listener, run as a task in siesta's event loop."""

    def __init__(
        self,
        config: Config,
        lifecycle: Lifecycle,
        store: Store,
        *,
        held: Callable[[], int],
        controller: Callable[[], object | None],
        health: Health | None = None,
    ):
        self.config = config
        self.metrics = SiestaMetrics(lifecycle, held, controller)
        self.hub = EventHub(lifecycle)
        self.api = AdminApi(lifecycle, store, self.metrics, self.hub, controller, health)
        self.token = ""
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind `gateway.admin_listen` and serve; return the bound address."""
        host, port = self.config.gateway.admin_address
        sock = _bind(host, port)  # first: a token made by a start that fails is never shown
        self.token, created = load_token(self.config.state_dir, os.environ)
        app = self.api.app(self.token)
        server = _Server(
            uvicorn.Config(
                app,
                lifespan="off",
                log_level="warning",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=2,
            )
        )
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="admin API")
        self._task.add_done_callback(_report_exit)
        if created:
            path = self.config.state_dir / TOKEN_FILE
            sys.stderr.write(f"siesta admin token (saved in {path}): {self.token}\n")
            sys.stderr.flush()
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        """End the event streams, finish requests under way (2s at most), close."""
        self.hub.close()
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise AdminListenError(
            exc.errno, f"gateway.admin_listen {host}:{port}: {exc.strerror or exc}"
        ) from exc


def _report_exit(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("the admin API stopped: %s", exc, exc_info=exc)


# -- OpenAPI --------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, **(_json_content(schema) if schema else {})}


_ERR = _ref("Error")
_SESSION_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required is not None:
        schema["required"] = required
    return schema


_SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string"}, "retry_after": {"type": "number"}}, ["error"]),
    "Session": _object(
        {
            "id": {"type": "string"},
            "template": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "state": {"type": "string", "enum": [s.value for s in State]},
            "endpoint": {"type": ["string", "null"], "description": "host:port of the backend"},
            "pid": _INT_OR_NULL,
            "created": {"type": "number", "description": "seconds since the epoch"},
            "awake_for": _NUMBER_OR_NULL,
            "idle_for": _NUMBER_OR_NULL,
            "next_check_in": _NUMBER_OR_NULL,
            "connections": {"type": "integer"},
            "inflight": {"type": "integer"},
            "held": {"type": "integer"},
            "requests": {"type": "integer"},
            "bytes": {"type": "integer"},
            "failures": {"type": "integer"},
            "retry_in": _NUMBER_OR_NULL,
        },
        ["id", "template", "labels", "state"],
    ),
    "NewSession": _object(
        {
            "id": {"type": "string", "pattern": NAME_PATTERN},
            "template": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        ["id", "template"],
    ),
    "Event": _object(
        {
            "session": {"type": "string"},
            "at": {"type": "number", "description": "seconds since the epoch"},
            "old": {"type": "string"},
            "new": {"type": "string"},
            "reason": {"type": "string"},
            "wake_seconds": _NUMBER_OR_NULL,
        },
        ["session", "at", "old", "new", "reason"],
    ),
    "Explanation": _object(
        {
            "session": {"type": "string"},
            "template": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in State]},
            "policy": {"type": "string"},
            "signals": {
                "type": ["object", "null"],
                "description": "every signal now (durations in seconds, `now` ISO 8601); "
                "null unless the session is awake",
            },
            "rules": {
                "type": "array",
                "description": "max_lifetime, min_awake, keep_awake_when, sleep_when: those "
                "the policy has, in the order they are looked at",
                "items": _object(
                    {
                        "key": {"type": "string"},
                        "source": {"type": "string"},
                        "effect": {"type": "string", "description": "what it does when it holds"},
                        "values": {"type": "object", "description": "the signals it reads"},
                        "holds": {"type": ["boolean", "null"]},
                        "error": {"type": ["string", "null"]},
                    }
                ),
            },
            "decision": {
                "type": ["object", "null"],
                "description": "the policy's decision now; null unless awake",
                "properties": {
                    "sleep": {"type": "boolean"},
                    "reason": {"type": "string"},
                    "sleep_in": {
                        "type": ["number", "null"],
                        "description": "seconds until it sleeps if only time passes; null "
                        "when that cannot be foreseen",
                    },
                    "sleep_at": {"type": ["number", "null"], "description": "the same, epoch"},
                    "next_check_in": _NUMBER_OR_NULL,
                    "warn_in": _NUMBER_OR_NULL,
                    "check_every": _NUMBER_OR_NULL,
                },
            },
            "note": {"type": ["string", "null"]},
        },
        ["session", "state", "policy", "rules"],
    ),
    "Usage": _object(
        {
            "awake_seconds": {"type": "number"},
            "asleep_seconds": {"type": "number"},
            "always_on_seconds": {"type": "number"},
            "saved_fraction": {"type": "number"},
            "wakes": {"type": "integer"},
            "sleeps": {"type": "integer"},
        }
    ),
}

_SINCE = {
    "name": "since",
    "in": "query",
    "schema": {"type": "number"},
    "description": "only events after this time (seconds since the epoch)",
}
_SESSION_FILTER = {"name": "session", "in": "query", "schema": {"type": "string"}}
_UNAUTHORIZED = {"401": _answer("missing or wrong token", _ERR)}
_NOT_FOUND = {"404": _answer("no such session", _ERR)}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "siesta admin API", "version": "1"},
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"token": []}],
    "paths": {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _answer("siesta runs", {"type": "object"})},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/sessions": {
            "get": {
                "summary": "Every session",
                "responses": {
                    "200": _answer("sessions", {"type": "array", "items": _ref("Session")}),
                    **_UNAUTHORIZED,
                },
            },
            "post": {
                "summary": "Create a session (ASLEEP) from a template",
                "requestBody": {"required": True, **_json_content(_ref("NewSession"))},
                "responses": {
                    "201": _answer("created", _ref("Session")),
                    "400": _answer("the body is not JSON", _ERR),
                    "409": _answer("the id is taken", _ERR),
                    "422": _answer("invalid id, labels or unknown template", _ERR),
                    **_UNAUTHORIZED,
                },
            },
        },
        "/api/sessions/{id}": {
            "parameters": [_SESSION_ID],
            "get": {
                "summary": "One session",
                "responses": {
                    "200": _answer("the session", _ref("Session")),
                    **_NOT_FOUND,
                    **_UNAUTHORIZED,
                },
            },
            "delete": {
                "summary": "Stop the session's backend and forget it (its events stay)",
                "responses": {
                    "200": _answer("deleted", _object({"deleted": {"type": "string"}})),
                    **_NOT_FOUND,
                    **_UNAUTHORIZED,
                },
            },
        },
        "/api/sessions/{id}/wake": {
            "parameters": [_SESSION_ID],
            "post": {
                "summary": "Wake the session; answers once it is awake",
                "responses": {
                    "200": _answer("awake", _ref("Session")),
                    "503": _answer("the wake failed; retry_after says when to try again", _ERR),
                    **_NOT_FOUND,
                    **_UNAUTHORIZED,
                },
            },
        },
        "/api/sessions/{id}/sleep": {
            "parameters": [_SESSION_ID],
            "post": {
                "summary": "Put the session to sleep; answers once its backend stopped",
                "responses": {
                    "200": _answer("asleep (or it was not awake)", _ref("Session")),
                    "202": _answer("it was already stopping", _ref("Session")),
                    "409": _answer("it is waking", _ERR),
                    **_NOT_FOUND,
                    **_UNAUTHORIZED,
                },
            },
        },
        "/api/sessions/{id}/explain": {
            "parameters": [_SESSION_ID],
            "get": {
                "summary": "Each rule of the session's policy with the signal values it reads, "
                "whether it holds, and when the session would sleep",
                "responses": {
                    "200": _answer("the explanation", _ref("Explanation")),
                    "503": _answer("the controller is not running yet", _ERR),
                    **_NOT_FOUND,
                    **_UNAUTHORIZED,
                },
            },
        },
        "/api/events": {
            "get": {
                "summary": "Stored events, oldest first",
                "parameters": [
                    _SESSION_FILTER,
                    _SINCE,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS},
                    },
                ],
                "responses": {
                    "200": _answer("events", {"type": "array", "items": _ref("Event")}),
                    "422": _answer("a bad parameter", _ERR),
                    **_UNAUTHORIZED,
                },
            }
        },
        "/api/events/stream": {
            "get": {
                "summary": "New events as server-sent events (event: transition, data: Event)",
                "description": "With `since` (or a Last-Event-ID header), stored events after "
                "that time come first. An event's id is its time.",
                "parameters": [_SESSION_FILTER, _SINCE],
                "responses": {
                    "200": {
                        "description": "an endless stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_UNAUTHORIZED,
                },
            }
        },
        "/api/savings": {
            "get": {
                "summary": "Awake, asleep and always-on seconds, per session and in total",
                "responses": {
                    "200": _answer(
                        "the ledger",
                        _object(
                            {
                                "at": {"type": "number"},
                                "sessions": {
                                    "type": "object",
                                    "additionalProperties": _ref("Usage"),
                                },
                                "total": _ref("Usage"),
                            }
                        ),
                    ),
                    **_UNAUTHORIZED,
                },
            }
        },
    },
}
