"""Activity probes: what answers mean (pure), the probe's own HTTP client against real
sockets, the prober's life with the session's, failures as signals, the `activity`
config key, and a generic probe end to end in a real siesta."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from siesta.config import ConfigError, parse_config
from siesta.core import activity
from siesta.core.model import Endpoint, Session, State
from siesta.core.policy import Signals, compile_rule
from siesta.probes import JupyterProbe, ProbeError, Prober, get_json, make_probe

from .admin import client, launch_admin
from .conftest import Launcher, backend_template, until, wait_for

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)

# What answers mean ----------------------------------------------------------------------


def test_jupyter_answers_become_the_app_map() -> None:
    """Counts from /api/status, busy kernels from /api/kernels, idle_for from last_activity."""
    status = {"connections": 2, "kernels": 3, "last_activity": "2026-03-02T10:25:00.5Z"}
    kernels = [
        {"id": "a", "execution_state": "busy"},
        {"id": "b", "execution_state": "idle"},
        {"id": "c", "execution_state": "busy"},
    ]
    app = activity.jupyter_app(status, kernels, NOW)
    assert app == {
        "ok": True,
        "error": "",
        "last_activity": datetime(2026, 3, 2, 10, 25, 0, 500000, tzinfo=UTC),
        "idle_for": timedelta(minutes=4, seconds=59.5),
        "kernels": 3,
        "busy_kernels": 2,
        "connections": 2,
    }
    assert set(app) == set(activity.JUPYTER_KEYS) == set(activity.JUPYTER_SAMPLE)


@pytest.mark.parametrize(
    ("status", "kernels", "problem"),
    [
        ([], [], "/api/status did not answer a JSON object"),
        ({"last_activity": "2026-03-02T10:25:00Z"}, {}, "/api/kernels did not answer a JSON list"),
        ({}, [], "/api/status has no last_activity"),
        ({"last_activity": "yesterday"}, [], "last_activity 'yesterday' is not a time"),
        ({"last_activity": "2026-03-02T10:25:00Z", "kernels": "2"}, [], "kernels is not"),
    ],
)
def test_jupyter_answers_of_the_wrong_shape_are_refused(
    status: Any, kernels: Any, problem: str
) -> None:
    """An answer that is not Jupyter's is an `AnswerError` naming what is wrong."""
    with pytest.raises(activity.AnswerError, match=problem):
        activity.jupyter_app(status, kernels, NOW)


def test_a_failure_keeps_the_last_values_and_brings_idle_for_up_to_date() -> None:
    """After a failed probe the last answer stands, with ok false and the error."""
    last = activity.jupyter_app(
        {"kernels": 1, "connections": 0, "last_activity": "2026-03-02T10:29:00Z"},
        [{"execution_state": "busy"}],
        NOW,
    )
    app = activity.failed(last, "no answer within 5s", NOW + timedelta(minutes=1))
    assert app["ok"] is False
    assert app["error"] == "no answer within 5s"
    assert app["busy_kernels"] == 1
    assert app["idle_for"] == timedelta(minutes=2)
    unknown = activity.jupyter_unknown(NOW, "not probed yet")
    assert unknown["ok"] is False
    assert unknown["idle_for"] == timedelta(0)
    assert set(unknown) == set(activity.JUPYTER_KEYS)


def test_a_generic_map_picks_dotted_paths_and_leaves_out_what_is_missing() -> None:
    """Paths go through objects and list indices; a path leading nowhere drops its key."""
    document = {"workers": {"busy": 2, "load": 0.5}, "items": [{"state": "run"}], "x": None}
    paths = {"busy": "workers.busy", "load": "workers.load", "first": "items.0.state"}
    paths |= {"gone": "items.5.state", "null": "x", "deep": "workers.busy.more"}
    assert activity.mapped_app(document, paths) == {
        "ok": True,
        "error": "",
        "busy": 2,
        "load": 0.5,
        "first": "run",
    }
    assert activity.mapped_app({"busy": 1, "ok": "spoof", "n": None}, None) == {
        "ok": True,
        "error": "",
        "busy": 1,
    }
    with pytest.raises(activity.AnswerError, match="not a JSON object"):
        activity.mapped_app([1, 2], None)


def test_a_reason_shows_the_jupyter_map_with_its_duration_and_timestamp() -> None:
    """A decision's reason lists the app map; its duration and timestamp read plainly."""
    rule = compile_rule("sleep_when", 'app.ok && app.idle_for > duration("1m")')
    app = activity.jupyter_app({"last_activity": "2026-03-02T10:25:00Z"}, [], NOW)
    reason = rule.explain(Signals(app=app))
    assert "idle_for: 5m" in reason
    assert "last_activity: 2026-03-02T10:25:00+00:00" in reason
    assert rule.holds(Signals(app=app))


def test_the_jupyter_token_comes_from_the_template_or_its_env() -> None:
    """`token` wins; else the template's JUPYTER_TOKEN; else no Authorization header."""

    class Spec:
        preset: str | None = "jupyter"
        http = None
        map = None
        headers: Mapping[str, str] = {}
        token: str | None = None
        every = timeout = 1.0

    spec = Spec()
    probe = make_probe(spec, {"JUPYTER_TOKEN": "from-env"}, "/s/nb/")
    assert isinstance(probe, JupyterProbe)
    assert probe._headers == {"Authorization": "token from-env"}
    assert probe._status == "/s/nb/api/status?no_track_activity=1"
    spec.token = "given"
    assert make_probe(spec, {"JUPYTER_TOKEN": "from-env"})._headers == {
        "Authorization": "token given"
    }
    spec.token = None
    assert make_probe(spec, {})._headers == {}


# The probe's HTTP client against real sockets ---------------------------------------------


Answer = Callable[[bytes], bytes | None]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Answer], Any]]:
    """A real TCP server on loopback answering each request head with given raw bytes."""
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Endpoint:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            reply = answer(head)
            if reply is None:  # never answer
                await asyncio.sleep(3600)
            writer.write(reply or b"")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


def _reply(head: str, body: bytes) -> Answer:
    return lambda request: head.encode() + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "answer",
    [
        _reply("HTTP/1.1 200 OK\r\nContent-Length: 11", b'{"busy": 1}'),
        _reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
            b'4\r\n{"bu\r\n7\r\nsy": 1}\r\n0\r\n\r\n',
        ),
        _reply("HTTP/1.1 200 OK\r\nConnection: close", b'{"busy": 1}'),
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
async def test_the_client_reads_every_kind_of_body(raw_server: Any, answer: Answer) -> None:
    """A body framed by length, by chunks or by the end of the connection is read whole."""
    endpoint = await raw_server(answer)
    assert await get_json(endpoint, "/status", {}) == {"busy": 1}


async def test_the_client_sends_a_plain_get_with_the_headers(raw_server: Any) -> None:
    """One GET, HTTP/1.1, with Host, the given headers and siesta's User-Agent."""
    seen: list[bytes] = []

    def answer(head: bytes) -> bytes:
        seen.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    endpoint = await raw_server(answer)
    await get_json(endpoint, "/api/status?x=1", {"Authorization": "token t"})
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "GET /api/status?x=1 HTTP/1.1"
    assert f"Host: {endpoint}" in lines
    assert "Authorization: token t" in lines
    assert any(line.lower().startswith("user-agent: siesta/") for line in lines)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (_reply("HTTP/1.1 403 Forbidden\r\nContent-Length: 0", b""), "status 403"),
        (_reply("HTTP/1.1 200 OK\r\nContent-Length: 5", b"hello"), "not JSON"),
        (_reply("HTTP/1.1 200 OK\r\nContent-Length: 50", b'{"a":'), "closed the connection"),
        (lambda head: b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
        (lambda head: b"", "closed the connection"),
    ],
    ids=["403", "not-json", "truncated", "not-http", "empty"],
)
async def test_a_bad_answer_is_a_probe_error(raw_server: Any, answer: Answer, problem: str) -> None:
    """Errors, non-JSON, truncated and non-HTTP answers raise `ProbeError` saying so."""
    endpoint = await raw_server(answer)
    with pytest.raises(ProbeError, match=problem):
        await get_json(endpoint, "/status", {})


async def test_nothing_listening_is_a_probe_error(raw_server: Any) -> None:
    """A refused connection is a `ProbeError`, not an OSError."""
    endpoint = await raw_server(lambda head: b"")
    closed = Endpoint(endpoint.host, 1)
    with pytest.raises(ProbeError, match="cannot connect"):
        await get_json(closed, "/status", {})


# The prober ---------------------------------------------------------------------------


class Sink:
    """The controller's side of the prober: the app maps, the failure count, the checks."""

    def __init__(self) -> None:
        self.app_signals: dict[str, Mapping[str, Any]] = {}
        self.probe_failures = 0
        self.checks: list[str] = []

    def check_soon(self, session_id: str) -> None:
        self.checks.append(session_id)


class Sessions:
    """The lifecycle's side of the prober: its sessions and its transition listeners."""

    def __init__(self, *sessions: Session) -> None:
        self.sessions = {s.id: s for s in sessions}
        self.listeners: list[Callable[[Session, State, State], None]] = []

    def move(self, sid: str, new: State) -> None:
        session = self.sessions[sid]
        old, session.state = session.state, new
        for listener in self.listeners:
            listener(session, old, new)


class Template:
    def __init__(self, probe: dict[str, Any] | None, env: dict[str, str] | None = None):
        text = "templates:\n  t:\n    command: [x]\n"
        if probe is not None:
            text += f"    activity: {json.dumps(probe)}\n"
        self.conf = parse_config(text, base_dir=Path.cwd()).templates["t"]
        self.activity = self.conf.activity
        self.env = env or {}


async def _status_server(document: dict[str, Any]) -> tuple[asyncio.Server, Endpoint]:
    """A real HTTP server answering GET with the current `document` as JSON."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps(document).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])


def _awake(sessions: Sessions, sid: str, endpoint: Endpoint) -> None:
    sessions.sessions[sid].endpoint = endpoint
    sessions.move(sid, State.WAKING)
    sessions.move(sid, State.AWAKE)


async def test_a_generic_probe_fills_the_app_map_while_awake_and_asks_for_checks() -> None:
    """Probes start at AWAKE, fill `app_signals` every `every` and stop when it sleeps."""
    document = {"workers": {"busy": 2}}
    server, endpoint = await _status_server(document)
    sessions, sink = Sessions(Session("alice", "t")), Sink()
    probe = {"http": "/status", "every": "50ms", "map": {"busy": "workers.busy"}}
    prober = Prober(sessions, {"t": Template(probe)}, sink)  # type: ignore[arg-type]
    assert sink.app_signals == {}
    _awake(sessions, "alice", endpoint)
    assert sink.app_signals["alice"] == {"ok": False, "error": "not probed yet"}
    await until(lambda: sink.app_signals["alice"].get("busy") == 2)
    assert sink.app_signals["alice"] == {"ok": True, "error": "", "busy": 2}
    document["workers"]["busy"] = 0
    await until(lambda: sink.app_signals["alice"].get("busy") == 0)
    assert sink.checks.count("alice") >= 2
    sessions.move("alice", State.STOPPING)
    assert "alice" not in sink.app_signals
    assert prober.probing == frozenset()
    await prober.close()
    server.close()
    assert sink.probe_failures == 0


async def test_a_failing_probe_is_a_signal_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the app stops answering: ok false, last values kept, failures counted, one warning."""
    server, endpoint = await _status_server({"busy": 3})
    sessions, sink = Sessions(Session("alice", "t")), Sink()
    probe = {"http": "/status", "every": "20ms", "timeout": "1s"}
    prober = Prober(sessions, {"t": Template(probe)}, sink)  # type: ignore[arg-type]
    _awake(sessions, "alice", endpoint)
    await until(lambda: sink.app_signals["alice"].get("busy") == 3)
    server.close()
    await server.wait_closed()
    with caplog.at_level(logging.WARNING, logger="siesta.probes"):
        await until(lambda: sink.probe_failures >= 3)
    app = sink.app_signals["alice"]
    assert app["ok"] is False
    assert "cannot connect" in app["error"]
    assert app["busy"] == 3  # the last answer stands
    warnings = [r for r in caplog.records if "activity probe failed" in r.getMessage()]
    assert len(warnings) == 1
    await prober.close()


async def test_a_probe_that_gets_no_answer_times_out(raw_server: Any) -> None:
    """An app that accepts but never answers fails the probe after `timeout`."""
    endpoint = await raw_server(lambda head: None)
    sessions, sink = Sessions(Session("alice", "t")), Sink()
    probe = {"preset": "jupyter", "every": "1h", "timeout": "100ms"}
    prober = Prober(sessions, {"t": Template(probe)}, sink)  # type: ignore[arg-type]
    _awake(sessions, "alice", endpoint)
    await until(lambda: sink.probe_failures == 1)
    app = sink.app_signals["alice"]
    assert (app["ok"], app["error"], app["busy_kernels"]) == (False, "no answer within 0.1s", 0)
    await prober.close()


async def test_sessions_awake_at_start_are_probed_and_templates_without_activity_are_not() -> None:
    """A session already AWAKE (re-adopted) gets its probe; one without `activity` none."""
    server, endpoint = await _status_server({"n": 1})
    alice = Session("alice", "t", state=State.AWAKE, endpoint=endpoint)
    bob = Session("bob", "plain", state=State.AWAKE, endpoint=endpoint)
    sessions, sink = Sessions(alice, bob), Sink()
    templates = {"t": Template({"http": "/s", "every": "1h"}), "plain": Template(None)}
    prober = Prober(sessions, templates, sink)  # type: ignore[arg-type]
    assert prober.probing == {"alice"}
    await until(lambda: sink.app_signals["alice"].get("n") == 1)
    assert "bob" not in sink.app_signals
    await prober.close()
    assert sink.app_signals == {}
    server.close()


# The `activity` key of templates ----------------------------------------------------------


def _load(activity_yaml: str | None, rule: str | None = None) -> Any:
    text = "templates:\n  nb:\n    command: [jupyter]\n"
    if activity_yaml is not None:
        text += f"    activity: {activity_yaml}\n"
    if rule is not None:
        text += f"    policy: p\npolicies:\n  p:\n    sleep_when: '{rule}'\n"
    return parse_config(text, source="siesta.yaml", base_dir=Path.cwd())


def test_the_issue_s_activity_settings_load() -> None:
    """`{preset: jupyter, every: 30s}` and `{http, every, map}` load, with their defaults."""
    jupyter = _load("{preset: jupyter, every: 30s}").templates["nb"].activity
    assert (jupyter.preset, jupyter.every, jupyter.timeout) == ("jupyter", 30.0, 5.0)
    assert jupyter.keys() == set(activity.JUPYTER_KEYS)
    generic = _load('{http: "/status", every: 10s, map: {busy: workers.busy}}')
    spec = generic.templates["nb"].activity
    assert (spec.http, spec.every, dict(spec.map)) == ("/status", 10.0, {"busy": "workers.busy"})
    assert spec.keys() == {"ok", "error", "busy"}
    assert _load(None).templates["nb"].activity is None


@pytest.mark.parametrize(
    ("activity_yaml", "problem"),
    [
        ("{every: 30s}", "templates.nb.activity: set preset (jupyter), http (a path"),
        ('{preset: jupyter, http: "/s"}', "set one of preset (jupyter) or http"),
        ("{preset: jupyterlab}", "templates.nb.activity.preset: must be 'jupyter'"),
        ("{http: status}", "templates.nb.activity.http: must be a path starting with '/'"),
        ('{http: "/s", token: abc}', "token goes with preset jupyter; with http, use headers"),
        ("{preset: jupyter, map: {a: b}}", "map and headers go with http, not with a preset"),
        ('{http: "/s", map: {ok: up}}', "map: ok is set by siesta itself: rename it"),
        ('{http: "/s", map: {"busy-now": a}}', "must be a CEL name"),
        ("{preset: jupyter, every: 0s}", "templates.nb.activity.every: must be more than 0s"),
        ("{preset: jupyter, timeot: 1s}", "templates.nb.activity.timeot: unknown key"),
    ],
)
def test_bad_activity_settings_are_refused_with_the_key(activity_yaml: str, problem: str) -> None:
    """Each mistake is one line naming the file, the line and the key."""
    with pytest.raises(ConfigError) as caught:
        _load(activity_yaml)
    assert problem in str(caught.value)
    assert str(caught.value).startswith("siesta.yaml:4 ")


def test_policies_reading_the_jupyter_keys_load() -> None:
    """`app.busy_kernels == 0` and the others compile against the preset's typed keys."""
    rule = (
        "app.ok && app.busy_kernels == 0 && app.kernels >= 0 && app.connections == 0"
        ' && app.idle_for > duration("15m") && app.last_activity < now && app.error == ""'
    )
    config = _load("{preset: jupyter}", rule)
    assert "app" in config.policy_for("nb").variables


@pytest.mark.parametrize(
    ("activity_yaml", "rule", "problem"),
    [
        (
            "{preset: jupyter}",
            "app.busy_kernel == 0",
            "policies.p.sleep_when: reads app.busy_kernel, which the activity probe of "
            "template 'nb' does not give (it gives: busy_kernels, connections, error, ",
        ),
        (
            None,
            "app.busy_kernels == 0",
            "policies.p.sleep_when: reads app.busy_kernels, but template 'nb' has no "
            "activity probe to give it",
        ),
        (
            "{preset: jupyter}",
            'app.busy_kernels > "0"',
            "policies.p.sleep_when: with the activity probe of template 'nb': the types "
            "do not match",
        ),
        (
            "{preset: jupyter}",
            "app.idle_for > 60",
            "the types do not match",
        ),
        (
            '{http: "/s", map: {busy: a.b}}',
            "app.ok && app.load < 1.0",
            "reads app.load, which the activity probe of template 'nb' does not give "
            "(it gives: busy, error, ok)",
        ),
    ],
    ids=["typo", "no-probe", "type", "duration-vs-int", "generic-map"],
)
def test_policies_reading_what_the_probe_cannot_give_are_refused(
    activity_yaml: str | None, rule: str, problem: str
) -> None:
    """A key the probe does not give, or a type it does not have, is refused at load."""
    with pytest.raises(ConfigError) as caught:
        _load(activity_yaml, rule)
    assert problem in str(caught.value)


def test_keys_tested_with_has_and_unmapped_generic_probes_are_not_refused() -> None:
    """`has(app.x) && app.x ...` is safe anywhere; a probe without `map` gives any key."""
    _load(None, "has(app.busy) && app.busy == 0")
    _load('{http: "/s"}', "app.anything == 1")
    _load("{preset: jupyter}", 'app.error != "app.nothing" && app.busy_kernels == 0')


# End to end ---------------------------------------------------------------------------


def test_a_real_siesta_probes_a_backend_and_sleeps_it_by_the_app_map(siesta: Launcher) -> None:
    """A generic probe of tests/backend.py's /headers feeds a policy that puts it to sleep."""
    template = backend_template(
        policy="p", activity={"http": "/headers", "every": "200ms", "map": {"seen": "path"}}
    )
    del template["idle_timeout"]
    run = siesta(templates={"web": template}, **_policy('app.ok && app.seen == "/headers"'))
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    wait_for(lambda: run.state("alice") is State.ASLEEP, what="alice to sleep by the app map")
    reason = run.events("alice")[-1].reason
    assert 'app.seen == "/headers"' in reason
    assert "seen: /headers" in reason


def test_a_real_siesta_counts_probe_failures_and_keeps_the_session_awake(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe answered 404 is counted in /metrics, and `app.ok` false holds off the sleep."""
    template = backend_template(policy="p", activity={"http": "/missing", "every": "100ms"})
    del template["idle_timeout"]
    rule = 'app.ok && idle_for > duration("300ms")'
    run, admin = launch_admin(siesta, monkeypatch, templates={"web": template}, **_policy(rule))
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200

    def failures() -> float:
        text = client(admin).get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("siesta_probe_failures_total"))
        return float(line.split()[-1])

    wait_for(lambda: failures() >= 10, what="ten probe failures")  # about 1s: idle for long
    assert run.state("alice") is State.AWAKE
    assert "the activity probe failed: GET /missing: status 404" in run.output()


def _policy(rule: str) -> dict[str, Any]:
    """The `policies` section of a config with policy p, checked every 100ms."""
    return {"policies": {"p": {"sleep_when": rule, "check_every": "100ms"}}}
