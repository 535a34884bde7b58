"""The admin API against a real `siesta up`: auth, every endpoint, errors, the event stream."""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import httpx
import psutil
import pytest

from siesta.core.model import State

from .admin import TOKEN, client, launch_admin
from .conftest import Launcher, backend_template, free_port, wait_for

PROTECTED = [
    ("GET", "/api/sessions"),
    ("POST", "/api/sessions"),
    ("GET", "/api/sessions/alice"),
    ("DELETE", "/api/sessions/alice"),
    ("POST", "/api/sessions/alice/wake"),
    ("POST", "/api/sessions/alice/sleep"),
    ("GET", "/api/sessions/alice/explain"),
    ("GET", "/api/sessions/alice/logs"),
    ("GET", "/api/sessions/alice/token"),
    ("POST", "/api/sessions/alice/token"),
    ("GET", "/api/signals"),
    ("GET", "/api/events"),
    ("GET", "/api/events/stream"),
    ("GET", "/api/savings"),
    ("GET", "/api/savings/advise"),
]


def test_no_token_or_a_wrong_one_is_401_on_every_api_route(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every /api/ route answers 401 JSON without the token or with a wrong one, and
    does nothing (alice stays asleep and registered); /healthz, /metrics and
    /openapi.json are open."""
    run, base = launch_admin(siesta, monkeypatch)
    for token in (None, "wrong"):
        with client(base, token) as api:
            for method, path in PROTECTED:
                response = api.request(method, path)
                assert response.status_code == 401, (method, path)
                assert "token" in response.json()["error"]
                assert response.headers["www-authenticate"] == "Bearer"
    assert run.state("alice") is State.ASLEEP
    assert "alice" in run.records()
    with client(base, None) as open_api:
        assert open_api.get("/healthz").json()["status"] == "ok"
        assert open_api.get("/metrics").status_code == 200
        assert open_api.get("/openapi.json").json()["openapi"].startswith("3.")


def test_a_token_is_made_at_first_start_kept_private_and_never_printed(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without SIESTA_ADMIN_TOKEN, siesta writes a token (mode 0600) into its state
    folder and prints the file's path once, never the token (logs are collected); a
    restart reuses it."""
    run, base = launch_admin(siesta, monkeypatch, token=None)
    path = run.state_dir / "admin-token"
    token = path.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    wait_for(lambda: str(path) in run.output(), what="the token file's path to be printed")
    assert token not in run.output()
    with client(base, token) as api:
        assert api.get("/api/sessions").status_code == 200
    run.stop()
    again, base = launch_admin(siesta, monkeypatch, token=None)
    assert path.read_text().strip() == token
    with client(base, token) as api:
        assert api.get("/api/sessions").status_code == 200
    assert token not in again.output()


def test_list_and_get_sessions(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /api/sessions lists every session; GET /api/sessions/{id} shows one; 404 else."""
    sessions = {
        "alice": {"template": "web", "labels": {"tier": "gold"}},
        "bob": {"template": "web"},
    }
    _, base = launch_admin(siesta, monkeypatch, sessions=sessions)
    with client(base) as api:
        listed = api.get("/api/sessions").json()
        assert [s["id"] for s in listed] == ["alice", "bob"]
        alice = api.get("/api/sessions/alice").json()
        assert alice["state"] == "ASLEEP"
        assert alice["labels"] == {"tier": "gold"}
        assert alice["template"] == "web"
        assert alice["pid"] is None
        missing = api.get("/api/sessions/nobody")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no session 'nobody'"}
        assert api.get("/api/no-such-route").status_code == 404
        assert "error" in api.get("/api/no-such-route").json()


def test_wake_then_sleep_through_the_api(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST wake answers once the backend serves (the gateway forwards at once);
    POST sleep answers once it stopped. Both are events with the admin as the reason."""
    run, base = launch_admin(siesta, monkeypatch)
    with client(base) as api:
        woken = api.post("/api/sessions/alice/wake")
        assert woken.status_code == 200
        body = woken.json()
        assert body["state"] == "AWAKE"
        assert psutil.pid_exists(body["pid"])
        served = httpx.get(run.url("alice"), timeout=10)
        assert served.headers["x-siesta-wake"] == "warm"
        assert api.post("/api/sessions/alice/wake").json()["pid"] == body["pid"]  # no-op
        slept = api.post("/api/sessions/alice/sleep")
        assert slept.status_code == 200
        assert slept.json()["state"] == "ASLEEP"
        wait_for(lambda: not _running(body["pid"]), what="the backend to exit")
        assert api.post("/api/sessions/alice/sleep").json()["state"] == "ASLEEP"  # no-op
        assert api.post("/api/sessions/nobody/wake").status_code == 404
        assert api.post("/api/sessions/nobody/sleep").status_code == 404
    reasons = [(e.new, e.reason) for e in run.events("alice")]
    assert (State.WAKING, "woken through the admin API") in reasons
    assert (State.STOPPING, "put to sleep through the admin API") in reasons


def test_a_wake_that_fails_is_503_with_retry_after(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend that exits at once: the wake answers 503 JSON with retry_after, and
    once the session is FAILED the retry_after covers the backoff."""
    broken = backend_template(
        command=[sys.executable, "-c", "raise SystemExit(3)"],
        max_start_failures=1,
        failure_backoff="60s",
    )
    _, base = launch_admin(siesta, monkeypatch, templates={"web": broken})
    with client(base) as api:
        first = api.post("/api/sessions/alice/wake")
        assert first.status_code == 503
        assert "start" in first.json()["error"]
        assert int(first.headers["retry-after"]) >= 1
        refused = api.post("/api/sessions/alice/wake")
        assert refused.status_code == 503
        assert refused.json()["retry_after"] > 30
        assert int(refused.headers["retry-after"]) > 30
        assert api.get("/api/sessions/alice").json()["state"] == "FAILED"


def test_create_and_delete_sessions(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST creates a session (reachable through the gateway at once); a taken id is
    409, a bad id, bad labels or an unknown template 422, a non-JSON body 400. DELETE
    stops the backend and forgets the session; its events stay."""
    run, base = launch_admin(siesta, monkeypatch)
    with client(base) as api:
        created = api.post(
            "/api/sessions", json={"id": "bob", "template": "web", "labels": {"team": "a"}}
        )
        assert created.status_code == 201
        assert created.json()["state"] == "ASLEEP"
        assert created.json()["labels"] == {"team": "a"}
        assert run.records()["bob"].labels == {"team": "a"}
        taken = api.post("/api/sessions", json={"id": "bob", "template": "web"})
        assert taken.status_code == 409
        assert "already exists" in taken.json()["error"]
        for body, words in [
            ({"id": "no spaces", "template": "web"}, "id must be"),
            ({"id": "-x", "template": "web"}, "id must be"),
            ({"template": "web"}, "id must be"),
            ({"id": "carol", "template": "nope"}, "unknown template 'nope'"),
            ({"id": "carol"}, "template must be"),
            ({"id": "carol", "template": "web", "labels": {"a": 1}}, "labels must be"),
            ([1, 2], "JSON object"),
        ]:
            refused = api.post("/api/sessions", json=body)
            assert refused.status_code == 422, body
            assert words in refused.json()["error"], body
        garbage = api.post("/api/sessions", content=b"{not json")
        assert garbage.status_code == 400
        assert "JSON" in garbage.json()["error"]

        assert httpx.get(run.url("bob"), timeout=30).text.startswith("hello from bob")
        pid = api.get("/api/sessions/bob").json()["pid"]
        deleted = api.delete("/api/sessions/bob")
        assert deleted.status_code == 200
        assert deleted.json() == {"deleted": "bob"}
        assert not _running(pid)
        assert api.get("/api/sessions/bob").status_code == 404
        assert api.delete("/api/sessions/bob").status_code == 404
        assert httpx.get(run.url("bob"), timeout=10).status_code == 404
    assert "bob" not in run.records()
    assert [e.new for e in run.events("bob")][-1] is State.ASLEEP  # events kept


def test_events_with_filters(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /api/events lists events oldest first, by session and after `since`; bad
    parameters are 422."""
    sessions = {"alice": {"template": "web"}, "bob": {"template": "web"}}
    _, base = launch_admin(siesta, monkeypatch, sessions=sessions)
    with client(base) as api:
        api.post("/api/sessions/alice/wake")
        middle = time.time()
        api.post("/api/sessions/bob/wake")
        everything = api.get("/api/events").json()
        assert [(e["session"], e["new"]) for e in everything] == [
            ("alice", "WAKING"),
            ("alice", "AWAKE"),
            ("bob", "WAKING"),
            ("bob", "AWAKE"),
        ]
        assert everything[1]["wake_seconds"] > 0
        assert [e["session"] for e in api.get("/api/events?session=bob").json()] == ["bob"] * 2
        later = api.get("/api/events", params={"since": middle}).json()
        assert [e["session"] for e in later] == ["bob", "bob"]
        assert len(api.get("/api/events?limit=1").json()) == 1
        assert api.get("/api/events?session=nobody").json() == []
        for bad in ("since=soon", "since=nan", "limit=0", "limit=x"):
            refused = api.get(f"/api/events?{bad}")
            assert refused.status_code == 422, bad
            assert "must be" in refused.json()["error"]


def test_the_event_stream_delivers_new_events(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/events/stream sends each new transition as a server-sent event, with
    only the asked session's events when `session` is given."""
    run, base = launch_admin(siesta, monkeypatch, sessions={"alice": {"template": "web"}})
    with client(base) as api, api.stream("GET", "/api/events/stream?session=alice") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "retry: 1000"  # subscribed: what happens now is sent
        api.post("/api/sessions", json={"id": "bob", "template": "web"})
        api.post("/api/sessions/bob/wake")  # not alice: filtered out
        httpx.get(run.url("alice"), timeout=30)
        received = []
        for line in lines:
            if line.startswith("data:"):
                received.append(json.loads(line[5:]))
                if len(received) == 2:
                    break
    assert [(e["session"], e["old"], e["new"]) for e in received] == [
        ("alice", "ASLEEP", "WAKING"),
        ("alice", "WAKING", "AWAKE"),
    ]
    assert received[0]["reason"] == "request GET /"


def test_the_event_stream_replays_from_since(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `since`, the stored events after it come first, then the new ones."""
    _, base = launch_admin(siesta, monkeypatch)
    with client(base) as api:
        api.post("/api/sessions/alice/wake")
        with api.stream("GET", "/api/events/stream", params={"since": 0}) as stream:
            data = (json.loads(line[5:]) for line in stream.iter_lines() if line[:5] == "data:")
            assert [next(data)["new"], next(data)["new"]] == ["WAKING", "AWAKE"]
            api.post("/api/sessions/alice/sleep")
            assert [next(data)["new"], next(data)["new"]] == ["STOPPING", "ASLEEP"]


def test_openapi_describes_every_route(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """/openapi.json lists exactly the routes the API serves, with bearer security."""
    _, base = launch_admin(siesta, monkeypatch)
    with client(base, None) as api:
        spec = api.get("/openapi.json").json()
    described = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }
    expected = {(m, p.replace("alice", "{id}")) for m, p in PROTECTED}
    assert described == expected | {("GET", "/healthz"), ("GET", "/metrics")}
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert spec["paths"]["/healthz"]["get"]["security"] == []


def test_openapi_is_generated_from_the_models(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document comes from the routes' pydantic models: the session's state is the
    enum of states, each protected operation documents 401 and each open one none; the
    docs page is open and loads Swagger UI from siesta itself."""
    _, base = launch_admin(siesta, monkeypatch)
    with client(base, None) as api:
        spec = api.get("/openapi.json").json()
        page = api.get("/docs")
        script = api.get("/docs/assets/swagger-ui-bundle.js")
    schemas = spec["components"]["schemas"]
    assert schemas["State"]["enum"] == [s.value for s in State]
    assert schemas["SessionInfo"]["properties"]["state"] == {"$ref": "#/components/schemas/State"}
    assert set(schemas["NewSession"]["required"]) == {"id", "template"}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            documented = "401" in operation["responses"]
            assert documented == (path not in ("/healthz", "/metrics")), (method, path)
    created = spec["paths"]["/api/sessions"]["post"]["responses"]
    assert {"201", "400", "409", "422"} <= set(created)
    assert page.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    assert script.status_code == 200
    assert len(script.content) > 100_000


def test_a_taken_admin_port_is_one_clear_error(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When gateway.admin_listen is taken, siesta exits 1 naming that setting."""
    import socket

    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        monkeypatch.setenv("SIESTA_ADMIN_TOKEN", TOKEN)
        with pytest.raises(AssertionError, match=r"gateway\.admin_listen 127\.0\.0\.1:\d+"):
            siesta(gateway={"admin_listen": f"127.0.0.1:{port}"})


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
