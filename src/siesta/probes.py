"""Activity probes: ask each awake session's app whether it is busy, for the `app` signal.

`siesta.app` starts one `Prober` beside the controller. For every AWAKE session
whose template has `activity`, it GETs the app's status every `every` seconds
(the Jupyter preset: `/api/status` and `/api/kernels`; or any JSON path with a
`map`), puts the resulting map in `controller.app_signals[session]` and asks the
controller to check the session soon. A probe that fails is a signal too: the map
keeps its last values with `ok` false, and `probe_failures` counts it; it never
raises. Sleeping sessions have no probe task. What the answers mean is decided in
`core.activity`; this module does the I/O, with httpx (`siesta.httpclient`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from siesta.core import activity
from siesta.core.clock import Clock, SystemClock
from siesta.core.model import Endpoint, Session, State
from siesta.httpclient import async_client
from siesta.lifecycle import Lifecycle

log = logging.getLogger("siesta.probes")

MAX_ANSWER = 1 << 20  # bytes: a status document is small; a larger answer is refused
MAX_CONCURRENT = 64  # probes in flight at once, so a restart with many awake sessions is smooth
PROBE_TIMEOUT = 5.0  # seconds for each step of a probe's request (the probe's own timeout wins)


class ProbeError(Exception):
    """A probe got no usable answer; the message says why, in a few words."""


class ActivitySpec(Protocol):
    """What a probe reads from a template's `activity` (see `config.ActivityConf`)."""

    @property
    def preset(self) -> str | None: ...
    @property
    def http(self) -> str | None: ...
    @property
    def map(self) -> Mapping[str, str] | None: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def token(self) -> str | None: ...
    @property
    def every(self) -> float: ...
    @property
    def timeout(self) -> float: ...


class ProbedTemplate(Protocol):
    """What the prober reads from a template."""

    @property
    def activity(self) -> ActivitySpec | None: ...
    @property
    def env(self) -> Mapping[str, str]: ...


class AppSink(Protocol):
    """Where probe results go: the controller."""

    app_signals: dict[str, Mapping[str, Any]]
    probe_failures: int

    def check_soon(self, session_id: str) -> None: ...


# HTTP -----------------------------------------------------------------------------------


async def get_json(
    endpoint: Endpoint,
    path: str,
    headers: Mapping[str, str],
    client: httpx.AsyncClient | None = None,
) -> Any:
    """GET `path` at `endpoint` and return its JSON body; `ProbeError` unless a 2xx JSON.

    `client` is the prober's (connections kept between probes); without one, a client
    is made for this request.
    """
    if client is None:
        async with async_client(PROBE_TIMEOUT) as own:
            return await get_json(endpoint, path, headers, own)
    url = f"http://{endpoint}{path}"
    try:
        async with client.stream(
            "GET", url, headers={"Accept": "application/json", **headers}
        ) as r:
            body = await _read_body(r, path)
    except httpx.ConnectError as exc:
        raise ProbeError(f"GET {path}: cannot connect: {_why(exc)}") from None
    except httpx.RemoteProtocolError as exc:
        raise ProbeError(f"GET {path}: {_protocol_problem(exc)}") from None
    except httpx.TransportError as exc:
        raise ProbeError(f"GET {path}: {_why(exc)}") from None
    if not 200 <= r.status_code < 300:
        raise ProbeError(f"GET {path}: status {r.status_code}")
    try:
        return json.loads(body)
    except ValueError:
        raise ProbeError(f"GET {path}: the answer is not JSON") from None


async def _read_body(response: httpx.Response, path: str) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_ANSWER:
            raise ProbeError(f"GET {path}: the answer is larger than {MAX_ANSWER} bytes")
    return bytes(body)


def _why(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    return str(getattr(cause, "strerror", None) or exc or type(exc).__name__)


def _protocol_problem(exc: httpx.RemoteProtocolError) -> str:
    """What a protocol error means for a probe: the app hung up, or did not speak HTTP."""
    text = str(exc)
    if "disconnected" in text or "closed" in text or "incomplete" in text:
        return "the app closed the connection mid-answer"
    return f"not an HTTP answer ({text})"


# Probes ---------------------------------------------------------------------------------


class JupyterProbe:
    """Jupyter Server's `/api/status` and `/api/kernels`, with its token when known.

    `?no_track_activity=1` keeps the probe's own requests out of the server's
    `last_activity` (as JupyterHub's idle culler does).
    """

    def __init__(self, token: str | None, base_url: str = "/"):
        self._headers = {"Authorization": f"token {token}"} if token else {}
        base = base_url if base_url.endswith("/") else base_url + "/"
        self._status = f"{base}api/status?no_track_activity=1"
        self._kernels = f"{base}api/kernels?no_track_activity=1"

    def unknown(self, now: datetime, error: str) -> dict[str, Any]:
        """The map before any answer."""
        return activity.jupyter_unknown(now, error)

    async def read(
        self, endpoint: Endpoint, now: Callable[[], datetime], client: httpx.AsyncClient
    ) -> dict[str, Any]:
        """The app map; `ProbeError` or `activity.AnswerError` when there is none."""
        status, kernels = await asyncio.gather(
            get_json(endpoint, self._status, self._headers, client),
            get_json(endpoint, self._kernels, self._headers, client),
        )
        return activity.jupyter_app(status, kernels, now())


class HttpProbe:
    """Any JSON status path; `paths` maps app keys to dotted JSON paths (None: top level)."""

    def __init__(self, path: str, paths: Mapping[str, str] | None, headers: Mapping[str, str]):
        self._path, self._paths, self._headers = path, paths, dict(headers)

    def unknown(self, now: datetime, error: str) -> dict[str, Any]:
        """The map before any answer: only `ok` and `error`."""
        return {"ok": False, "error": error}

    async def read(
        self, endpoint: Endpoint, now: Callable[[], datetime], client: httpx.AsyncClient
    ) -> dict[str, Any]:
        """The app map; `ProbeError` or `activity.AnswerError` when there is none."""
        answer = await get_json(endpoint, self._path, self._headers, client)
        return activity.mapped_app(answer, self._paths)


Probe = JupyterProbe | HttpProbe


def make_probe(spec: ActivitySpec, env: Mapping[str, str], base_url: str = "/") -> Probe:
    """The probe `spec` describes; the Jupyter token falls back on the template's JUPYTER_TOKEN."""
    if spec.preset == "jupyter":
        return JupyterProbe(spec.token or env.get("JUPYTER_TOKEN"), base_url)
    if spec.http is None:
        raise ValueError("an activity probe needs a preset or an http path")
    return HttpProbe(spec.http, spec.map, spec.headers)


# Running --------------------------------------------------------------------------------


class Prober:
    """Runs the activity probe of every awake session that has one, while it is awake.

    Started and stopped by lifecycle transitions (a listener); results go to
    `sink` (the controller): its `app_signals`, `probe_failures` and `check_soon`.
    `base_url` gives the path a session's app is served under.
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        templates: Mapping[str, ProbedTemplate],
        sink: AppSink,
        *,
        base_url: Callable[[str], str] = lambda session: "/",
        clock: Clock | None = None,
    ):
        self._templates = templates
        self._sink = sink
        self._base_url = base_url
        self._clock = clock or SystemClock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._http = async_client(PROBE_TIMEOUT)
        lifecycle.listeners.append(self._on_transition)
        for session in lifecycle.sessions.values():
            if session.state is State.AWAKE:
                self._begin(session)

    @property
    def probing(self) -> frozenset[str]:
        """The sessions being probed."""
        return frozenset(self._tasks)

    async def close(self) -> None:
        """Stop every probe."""
        tasks = list(self._tasks.values())
        for sid in list(self._tasks):
            self._end(sid)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    def _on_transition(self, session: Session, old: State, new: State) -> None:
        if new is State.AWAKE:
            self._begin(session)
        elif old is State.AWAKE:
            self._end(session.id)

    def _begin(self, session: Session) -> None:
        template = self._templates.get(session.template)
        spec = None if template is None else template.activity
        if template is None or spec is None or session.endpoint is None:
            return
        self._end(session.id)
        probe = make_probe(spec, template.env, self._base_url(session.id))
        self._sink.app_signals[session.id] = probe.unknown(self._now(), "not probed yet")
        run = self._run(session.id, session.endpoint, probe, spec)
        self._tasks[session.id] = asyncio.create_task(run, name=f"probe {session.id}")

    def _end(self, sid: str) -> None:
        task = self._tasks.pop(sid, None)
        if task is not None:
            task.cancel()
        self._sink.app_signals.pop(sid, None)
        self._failing.discard(sid)

    async def _run(self, sid: str, endpoint: Endpoint, probe: Probe, spec: ActivitySpec) -> None:
        while True:
            await self.probe_once(sid, endpoint, probe, spec.timeout)
            await asyncio.sleep(spec.every)

    async def probe_once(self, sid: str, endpoint: Endpoint, probe: Probe, timeout: float) -> None:
        """Probe one session now, record the result and ask for a policy check; never raises."""
        try:
            async with self._slots, asyncio.timeout(timeout):
                app = await probe.read(endpoint, self._now, self._http)
        except (ProbeError, activity.AnswerError) as exc:
            self._failed(sid, str(exc))
        except TimeoutError:
            self._failed(sid, f"no answer within {timeout:g}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a probe must never take siesta down
            log.exception("%s: the activity probe broke", sid)
            self._failed(sid, f"the probe broke: {exc!r}")
        else:
            if sid in self._failing:
                self._failing.discard(sid)
                log.info("%s: the activity probe answers again", sid)
            self._record(sid, app)

    def _failed(self, sid: str, error: str) -> None:
        self._sink.probe_failures += 1
        if sid not in self._failing:  # once per run of failures, not every `every` seconds
            self._failing.add(sid)
            log.warning("%s: the activity probe failed: %s", sid, error)
        last = self._sink.app_signals.get(sid, {})
        self._record(sid, activity.failed(last, error, self._now()))

    def _record(self, sid: str, app: dict[str, Any]) -> None:
        if sid not in self._tasks:
            return  # the session left AWAKE while the probe was out
        self._sink.app_signals[sid] = app
        self._sink.check_soon(sid)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.time(), UTC)
