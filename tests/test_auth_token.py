"""gateway.auth mode token, on a real siesta with real backends and real sockets.

Each session has a token: as `Authorization: Bearer`, as the session's cookie, or
once as `?siesta_token=` (exchanged for the cookie and a redirect). A request
without it is refused before anything else: it never starts a backend, and an
unknown session looks exactly like a refused one. Tokens are kept in both stores,
survive a restart, and a rotation refuses the old token and its cookie at once.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from siesta.config import StoreConf
from siesta.store import open_store
from siesta.store.base import Batch, Registration
from siesta.store.sqlite import SqliteStore

from .admin import TOKEN, launch_admin
from .admin import client as admin_client
from .conftest import Launcher, SiestaProcess, backend_template, free_port, raw, wait_for
from .redis_server import running_redis
from .test_replicas import Cluster

TOKEN_AUTH = {"auth": {"mode": "token"}}


def _start(siesta: Launcher, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> SiestaProcess:
    gateway = {**TOKEN_AUTH, **kwargs.pop("gateway", {})}
    sessions = kwargs.pop("sessions", {"alice": {"template": "web"}, "bob": {"template": "web"}})
    proc, _ = launch_admin(siesta, monkeypatch, gateway=gateway, sessions=sessions, **kwargs)
    return proc


def _token(proc: SiestaProcess, session: str, *, rotate: bool = False) -> str:
    with admin_client(f"http://127.0.0.1:{proc.admin_port}") as admin:
        answer = admin.request("POST" if rotate else "GET", f"/api/sessions/{session}/token")
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    assert isinstance(token, str)
    assert len(token) >= 40
    return token


def _shape(response: httpx.Response) -> tuple[int, list[str], str]:
    """What a client sees of a refusal, without the event id (random per answer)."""
    names = sorted(k.lower() for k in response.headers if k.lower() != "x-siesta-event")
    return response.status_code, names, re.sub(r"event \w+", "event X", response.text)


def test_without_the_token_nothing_starts(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No token, a wrong one, or a token of another session: 401 with a Bearer challenge,
    and no backend is ever started."""
    proc = _start(siesta, monkeypatch)
    bob = _token(proc, "bob")
    with httpx.Client(timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {bob}"}):
            answer = http.get(proc.url("alice", "/"), headers=headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == 'Bearer realm="siesta"'
        cookie = http.get(proc.url("alice"), headers={"Cookie": "siesta_token_alice=forged"})
        assert cookie.status_code == 401
    assert proc.start_count() == 0
    assert proc.backend_pids() == []


def test_bearer_reaches_the_session_and_is_not_passed_on(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The right bearer token wakes the session; the backend never sees the Authorization
    header (or a siesta cookie), but does see the client's other cookies."""
    proc = _start(siesta, monkeypatch)
    token = _token(proc, "alice")
    headers = {"Authorization": f"Bearer {token}", "Cookie": "app=1; siesta_token_bob=x"}
    with httpx.Client(timeout=30) as http:
        first = http.get(proc.url("alice", "/headers"), headers=headers)
        again = http.get(proc.url("alice", "/headers"), headers=headers)  # the reused head
    for answer in (first, again):
        assert answer.status_code == 200, answer.text
        seen = dict(answer.json()["headers"])
        assert "authorization" not in seen
        assert seen["cookie"] == "app=1"
    assert first.headers["x-siesta-wake"] == "cold"
    assert proc.start_count() == 1


def test_the_apps_own_authorization_passes_with_the_cookie(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the session's cookie, an Authorization header that is not the session's
    token is the app's own: it is passed on."""
    proc = _start(siesta, monkeypatch)
    token = _token(proc, "alice")
    with httpx.Client(timeout=30) as http:
        exchanged = http.get(proc.url("alice", f"/?siesta_token={token}"))
        cookie = exchanged.headers["set-cookie"].split(";")[0]
        answer = http.get(
            proc.url("alice", "/headers"),
            headers={"Cookie": cookie, "Authorization": "Bearer app-token"},
        )
    assert answer.status_code == 200, answer.text
    seen = dict(answer.json()["headers"])
    assert seen["authorization"] == "Bearer app-token"
    assert "cookie" not in seen


def test_query_token_is_exchanged_for_a_cookie(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`?siesta_token=` answers 303 to the same URL without it, with an HttpOnly,
    SameSite=Lax cookie scoped to the session's path (not Secure over plain HTTP); the
    exchange itself wakes nothing; the cookie then reaches the session."""
    proc = _start(siesta, monkeypatch)
    token = _token(proc, "alice")
    with httpx.Client(timeout=30) as http:
        exchanged = http.get(proc.url("alice", f"/headers?x=1&siesta_token={token}&y=2"))
        assert exchanged.status_code == 303
        assert exchanged.headers["location"] == "/s/alice/headers?x=1&y=2"
        flags = [part.strip() for part in exchanged.headers["set-cookie"].split(";")]
        name, _, value = flags[0].partition("=")
        assert name == "siesta_token_alice"
        assert value
        assert value != token  # the cookie is not the token itself
        assert set(flags[1:]) == {"Path=/s/alice", "HttpOnly", "SameSite=Lax"}
        assert proc.start_count() == 0
        wrong = http.get(proc.url("alice", "/?siesta_token=wrong"))
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        served = http.get(proc.url("alice", "/headers?x=1&y=2"), headers={"Cookie": flags[0]})
        assert served.status_code == 200
        assert served.json()["query"] == "x=1&y=2"
        other = http.get(proc.url("bob", "/"), headers={"Cookie": flags[0]})
        assert other.status_code == 401  # alice's cookie is not bob's


def test_cookie_is_secure_behind_a_trusted_tls_proxy(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """X-Forwarded-Proto: https from a trusted proxy makes the cookie Secure; the same
    header from anyone else does not."""
    proc = _start(siesta, monkeypatch, gateway={"trusted_proxies": ["127.0.0.1/32"]})
    token = _token(proc, "alice")
    with httpx.Client(timeout=30) as http:
        tls = http.get(
            proc.url("alice", f"/?siesta_token={token}"), headers={"X-Forwarded-Proto": "https"}
        )
    assert tls.status_code == 303
    assert "Secure" in [p.strip() for p in tls.headers["set-cookie"].split(";")]
    (tmp_path / "other").mkdir()
    untrusted = _start(siesta, monkeypatch, config_dir=tmp_path / "other")
    token = _token(untrusted, "alice")
    with httpx.Client(timeout=30) as http:
        plain = http.get(
            untrusted.url("alice", f"/?siesta_token={token}"),
            headers={"X-Forwarded-Proto": "https"},
        )
    assert "Secure" not in plain.headers["set-cookie"]


def test_unknown_and_refused_sessions_look_the_same(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """To a client without the right token, a session that does not exist and one that
    does answer with the same status, headers and text (only the event id differs)."""
    proc = _start(siesta, monkeypatch)
    alice = _token(proc, "alice")
    with httpx.Client(timeout=30) as http:
        for headers in ({}, {"Authorization": f"Bearer {alice}"}, {"Authorization": "Bearer x"}):
            known = http.get(proc.url("bob", "/x"), headers=headers)
            unknown = http.get(proc.url("nobody", "/x"), headers=headers)
            assert known.status_code == 401
            assert _shape(known) == _shape(unknown)
        query = http.get(proc.url("nobody", f"/?siesta_token={alice}"))
        refused = http.get(proc.url("bob", f"/?siesta_token={alice}"))
        assert _shape(query) == _shape(refused)
    head = b"GET /s/%s/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    known_raw = raw(proc.port, head % b"bob")
    unknown_raw = raw(proc.port, head % b"nobody")
    strip = re.compile(rb"[0-9a-f]{12}")
    assert strip.sub(b"E", known_raw) == strip.sub(b"E", unknown_raw)
    assert proc.start_count() == 0


def test_rotation_refuses_the_old_token_and_its_cookie(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /api/sessions/{id}/token makes a new token: the old bearer and the cookie
    made from it are refused at once; the new one works."""
    proc = _start(siesta, monkeypatch)
    old = _token(proc, "alice")
    with httpx.Client(timeout=30) as http:
        cookie = http.get(proc.url("alice", f"/?siesta_token={old}")).headers["set-cookie"]
        cookie = cookie.split(";")[0]
        assert http.get(proc.url("alice"), headers={"Cookie": cookie}).status_code == 200
        new = _token(proc, "alice", rotate=True)
        assert new != old
        assert _token(proc, "alice") == new
        bearer_old = http.get(proc.url("alice"), headers={"Authorization": f"Bearer {old}"})
        assert bearer_old.status_code == 401
        assert http.get(proc.url("alice"), headers={"Cookie": cookie}).status_code == 401
        bearer_new = http.get(proc.url("alice"), headers={"Authorization": f"Bearer {new}"})
        assert bearer_new.status_code == 200


def test_tokens_are_stored_made_with_new_sessions_and_survive_a_restart(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A session created through the API has a token at once (in the store), `siesta
    sessions token` prints it, and after a restart the same token still works."""
    proc = _start(siesta, monkeypatch, sessions={})
    with admin_client(f"http://127.0.0.1:{proc.admin_port}") as admin:
        created = admin.post("/api/sessions", json={"id": "carol", "template": "web"})
        assert created.status_code == 201
        assert admin.get("/api/sessions/nobody/token").status_code == 404
    proc.settle()
    stored = _stored_tokens(proc.state_dir / "state.db")
    assert set(stored) == {"carol"}
    printed = subprocess.run(
        [sys.executable, "-m", "siesta", "sessions", "token", "carol", "-c", str(proc.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == stored["carol"]
    assert proc.stop() == 0
    again = siesta(gateway=yaml_gateway(proc), sessions={}, config_dir=tmp_path, port=proc.port)
    with httpx.Client(timeout=30) as http:
        answer = http.get(
            again.url("carol"), headers={"Authorization": f"Bearer {stored['carol']}"}
        )
    assert answer.status_code == 200, answer.text


def yaml_gateway(proc: SiestaProcess) -> dict[str, Any]:
    return dict(yaml.safe_load(proc.config.read_text())["gateway"])


def _stored_tokens(path: Path) -> dict[str, str]:
    store = SqliteStore(path)
    try:
        return store.tokens()
    finally:
        store.close()


def test_host_routing_scopes_the_cookie_to_the_host(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With host routing the cookie's path is / (the host scopes it) and the redirect
    keeps the path."""
    proc = _start(siesta, monkeypatch, gateway={"routing": "host", "domain": "localhost"})
    token = _token(proc, "alice")
    with httpx.Client(timeout=30) as http:
        answer = http.get(
            f"{proc.base}/lab?siesta_token={token}", headers={"Host": "alice.localhost"}
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == "/lab"
        assert "Path=/;" in answer.headers["set-cookie"] + ";"
        cookie = answer.headers["set-cookie"].split(";")[0]
        served = http.get(f"{proc.base}/", headers={"Host": "alice.localhost", "Cookie": cookie})
        assert served.status_code == 200


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_both_stores_keep_and_delete_tokens(kind: str, tmp_path: Path) -> None:
    """Tokens written in a batch are read back; a deleted session's token goes with it."""
    with running_redis(tmp_path / "redis") if kind == "redis" else _nothing() as server:
        location = server.url if server is not None else str(tmp_path / "state.db")
        store = open_store(StoreConf(location=location), "test")
        await store.open()
        try:
            registered = {s: Registration("web", {}, 1.0) for s in ("alice", "bob")}
            await store.write(Batch(registered=registered, tokens={"alice": "a1", "bob": "b1"}))
            await store.write(Batch(tokens={"alice": "a2"}))
            assert await store.tokens() == {"alice": "a2", "bob": "b1"}
            await store.write(Batch(deleted={"bob"}))
            assert await store.tokens() == {"alice": "a2"}
        finally:
            await store.close()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


CRASH = "import sys; print('boom: the secret is hunter2', flush=True); sys.exit(3)"


def test_behind_auth_the_failure_page_hides_the_backend_log(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session behind auth that cannot start shows an admitted browser the reason and
    the countdown, never its backend's log (which may hold what users must not read)."""
    broken = backend_template(
        command=[sys.executable, "-c", CRASH], max_start_failures=1, failure_backoff="60s"
    )
    proc = _start(siesta, monkeypatch, templates={"web": broken})
    token = _token(proc, "alice")
    headers = {"Accept": "text/html", "Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=30) as http:
        page = http.get(proc.url("alice"), headers=headers)
    assert page.status_code == 503
    assert "could not start" in page.text
    assert 'id="countdown"' in page.text
    assert "hunter2" not in page.text
    assert 'id="log"' not in page.text


def test_no_auth_beyond_loopback_is_warned_about(siesta: Launcher, tmp_path: Path) -> None:
    """Listening on all addresses with mode none: a warning at start; on loopback, none."""
    port = free_port()
    exposed = siesta(gateway={"listen": f"0.0.0.0:{port}"}, port=port)
    wait_for(lambda: "gateway.auth mode none" in exposed.output(), what="the warning")
    assert "anyone who reaches it can use and wake every session" in exposed.output()
    (tmp_path / "loopback").mkdir()
    quiet = siesta(config_dir=tmp_path / "loopback")
    assert httpx.get(quiet.url("alice"), timeout=30).status_code == 200  # started, served
    assert "gateway.auth mode none" not in quiet.output()


class _TokenCluster(Cluster):
    """Replicas on one Redis, with gateway.auth mode token."""

    def config(self, port: int, admin: int, keda: int) -> dict[str, Any]:
        conf = super().config(port, admin, keda)
        conf["gateway"]["auth"] = {"mode": "token"}
        return conf


def test_replicas_share_tokens_and_rotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas on one Redis: a session created through one has a token the other's
    gateway accepts; a rotation through the other is refused by the first at once."""
    monkeypatch.setenv("SIESTA_ADMIN_TOKEN", TOKEN)
    with running_redis(tmp_path / "redis") as redis:
        cluster = _TokenCluster(tmp_path, redis, {})
        try:
            first, second = cluster.start("r0"), cluster.start("r1")
            with admin_client(f"http://127.0.0.1:{first.admin}") as admin:
                created = admin.post("/api/sessions", json={"id": "carol", "template": "web"})
                assert created.status_code == 201
                old = admin.get("/api/sessions/carol/token").json()["token"]
            bearer = {"Authorization": f"Bearer {old}"}
            wait_for(
                lambda: httpx.get(second.url("carol"), headers=bearer, timeout=30).is_success,
                what="the second replica to accept the token",
            )
            with admin_client(f"http://127.0.0.1:{second.admin}") as admin:
                new = admin.post("/api/sessions/carol/token").json()["token"]
            wait_for(
                lambda: (
                    httpx.get(first.url("carol"), headers=bearer, timeout=30).status_code == 401
                ),
                what="the first replica to refuse the old token",
            )
            fresh = httpx.get(first.url("carol"), headers={"Authorization": f"Bearer {new}"})
            assert fresh.status_code == 200
        finally:
            for replica in cluster.all:
                replica.proc.send_signal(signal.SIGTERM)
            for replica in cluster.all:
                try:
                    replica.proc.wait(60)
                except subprocess.TimeoutExpired:
                    replica.proc.kill()
