"""gateway.auth mode forward_auth against a small real auth server (an HTTP server on
127.0.0.1 in the test process), with a real siesta and real backends.

The auth server says yes (2xx, with X-Forwarded-User), no (401 with its own body,
or a 302 to its login page for a browser), slowly, or not at all. siesta passes a
yes on with the chosen headers (dropping the same headers sent by the client),
returns a no as the auth server wrote it, caches yeses for a short time, and
answers 503 when the auth server is down or slow: never lets a request through
without a yes, never starts a backend for a refused request.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Launcher, SiestaProcess, free_port, wait_for

USERS = {"alice-secret": "alice", "bob-secret": "bob"}


class AuthServer:
    """The auth server: who is asking, from a bearer token or an `sso` cookie."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.delay = 0.0
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                owner.calls.append({k.lower(): v for k, v in self.headers.items()})
                if owner.delay:
                    time.sleep(owner.delay)
                user = self._user()
                if user is not None:
                    self.send_response(200)
                    self.send_header("X-Forwarded-User", user)
                    self.send_header("X-Auth-Groups", "staff")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif "text/html" in self.headers.get("Accept", ""):
                    back = self.headers.get("X-Forwarded-Uri", "")
                    self.send_response(302)
                    self.send_header("Location", f"https://login.example/?rd={back}")
                    self.send_header("Set-Cookie", "csrf=abc; Path=/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    body = b"who are you?\n"
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="sso"')
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def _user(self) -> str | None:
                given = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if given in USERS:
                    return USERS[given]
                for part in self.headers.get("Cookie", "").split(";"):
                    name, _, value = part.strip().partition("=")
                    if name == "sso" and value in USERS:
                        return USERS[value]
                return None

        return Handler

    def __enter__(self) -> AuthServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    with AuthServer() as server:
        yield server


SESSIONS = {
    "alice": {"template": "web", "labels": {"owner": "alice"}},
    "bob": {"template": "web", "labels": {"owner": "bob"}},
}


def _start(
    siesta: Launcher, url: str, config_dir: Path | None = None, **auth: Any
) -> SiestaProcess:
    forward = {"url": url, "copy_headers": ["X-Forwarded-User"], **auth.pop("forward", {})}
    gateway = {"auth": {"mode": "forward_auth", "forward_auth": forward, **auth}}
    if config_dir is not None:
        config_dir.mkdir()
    return siesta(gateway=gateway, sessions=SESSIONS, config_dir=config_dir)


def _shape(response: httpx.Response) -> tuple[int, list[str], str]:
    names = sorted(k.lower() for k in response.headers if k.lower() != "x-siesta-event")
    return response.status_code, names, re.sub(r"event \w+", "event X", response.text)


def test_refusals_are_the_auth_servers_and_start_nothing(
    siesta: Launcher, auth_server: AuthServer
) -> None:
    """Without credentials: an API client gets the auth server's 401 (its body and
    challenge), a browser its 302 to the login page (with its cookie); no backend starts."""
    proc = _start(siesta, auth_server.url)
    with httpx.Client(timeout=30) as http:
        api = http.get(proc.url("alice", "/data?x=1"))
        browser = http.get(proc.url("alice", "/page"), headers={"Accept": "text/html"})
        wrong = http.get(proc.url("alice"), headers={"Authorization": "Bearer nope"})
    assert api.status_code == 401
    assert api.text == "who are you?\n"
    assert api.headers["www-authenticate"] == 'Bearer realm="sso"'
    assert api.headers["content-type"] == "text/plain"
    assert browser.status_code == 302
    assert browser.headers["location"] == "https://login.example/?rd=/s/alice/page"
    assert browser.headers["set-cookie"] == "csrf=abc; Path=/"
    assert wrong.status_code == 401
    asked = auth_server.calls[0]
    assert asked["x-forwarded-method"] == "GET"
    assert asked["x-forwarded-uri"] == "/s/alice/data?x=1"
    assert asked["x-forwarded-host"] == f"127.0.0.1:{proc.port}"
    assert asked["x-forwarded-proto"] == "http"
    assert asked["x-forwarded-for"] == "127.0.0.1"
    assert proc.start_count() == 0


def test_a_yes_passes_the_chosen_headers_and_drops_forged_ones(
    siesta: Launcher, auth_server: AuthServer
) -> None:
    """A 2xx lets the request through with X-Forwarded-User from the auth server; the
    same header sent by the client never reaches the backend, nor do headers that
    were not chosen."""
    proc = _start(siesta, auth_server.url)
    with httpx.Client(timeout=30) as http:
        answer = http.get(
            proc.url("alice", "/headers"),
            headers={"Cookie": "sso=alice-secret", "X-Forwarded-User": "mallory"},
        )
    assert answer.status_code == 200, answer.text
    seen = answer.json()["headers"]
    assert [v for k, v in seen if k == "x-forwarded-user"] == ["alice"]
    assert "x-auth-groups" not in dict(seen)
    assert dict(seen)["cookie"] == "sso=alice-secret"  # the app's cookies are its own


def test_allow_rule_admits_the_owner_only(siesta: Launcher, auth_server: AuthServer) -> None:
    """`headers["x-forwarded-user"] == session.labels.owner`: alice reaches her session,
    bob gets 403 there, and for bob an unknown session looks like alice's."""
    proc = _start(
        siesta, auth_server.url, allow='headers["x-forwarded-user"] == session.labels.owner'
    )
    with httpx.Client(timeout=30) as http:
        own = http.get(proc.url("alice"), headers={"Authorization": "Bearer alice-secret"})
        other = http.get(proc.url("alice"), headers={"Authorization": "Bearer bob-secret"})
        # both after the yes for bob is cached: a cached answer is given at once
        other = http.get(proc.url("alice"), headers={"Authorization": "Bearer bob-secret"})
        unknown = http.get(proc.url("nobody"), headers={"Authorization": "Bearer bob-secret"})
    assert own.status_code == 200
    assert own.text.startswith("hello from alice")
    assert other.status_code == 403
    assert _shape(other) == _shape(unknown)
    assert proc.start_count() == 1


def test_yes_answers_are_cached_for_the_ttl(
    siesta: Launcher, auth_server: AuthServer, tmp_path: Path
) -> None:
    """Within cache_ttl the same credentials cost one call; other credentials and
    refusals are asked each time."""
    proc = _start(siesta, auth_server.url, forward={"cache_ttl": "1h"})
    alice = {"Authorization": "Bearer alice-secret"}
    with httpx.Client(timeout=30) as http:
        for _ in range(3):
            assert http.get(proc.url("alice"), headers=alice).status_code == 200
        assert len(auth_server.calls) == 1
        for _ in range(2):
            assert http.get(proc.url("alice")).status_code == 401
        assert len(auth_server.calls) == 3
    uncached = _start(siesta, auth_server.url, tmp_path / "b", forward={"cache_ttl": 0})
    before = len(auth_server.calls)
    with httpx.Client(timeout=30) as http:
        for _ in range(2):
            assert http.get(uncached.url("alice"), headers=alice).status_code == 200
    assert len(auth_server.calls) == before + 2


def test_auth_server_down_is_503_never_a_pass(siesta: Launcher) -> None:
    """Nothing listens at the auth URL: 503 with Retry-After, and no backend starts."""
    proc = _start(siesta, f"http://127.0.0.1:{free_port()}/auth")
    with httpx.Client(timeout=30) as http:
        answer = http.get(proc.url("alice"), headers={"Authorization": "Bearer alice-secret"})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert "auth server" in answer.text
    assert "127.0.0.1" not in answer.text  # where it is goes to the log, not to clients
    assert proc.start_count() == 0
    assert _dependency(proc)["mode"] == "degraded"


def test_a_slow_auth_server_is_503_after_the_timeout(
    siesta: Launcher, auth_server: AuthServer
) -> None:
    """An auth server slower than `timeout`: 503 once the timeout passed, not a hang."""
    proc = _start(siesta, auth_server.url, forward={"timeout": "500ms"})
    auth_server.delay = 5.0
    with httpx.Client(timeout=30) as http:
        answer = http.get(proc.url("alice"), headers={"Authorization": "Bearer alice-secret"})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "5"
        assert proc.start_count() == 0
        assert _dependency(proc)["mode"] == "degraded"
        auth_server.delay = 0.0
        again = http.get(proc.url("alice"), headers={"Authorization": "Bearer alice-secret"})
    assert again.status_code == 200
    assert _dependency(proc)["mode"] == "ok"


def _dependency(proc: SiestaProcess) -> dict[str, Any]:
    """The auth server as /healthz shows it."""
    health = httpx.get(f"http://127.0.0.1:{proc.admin_port}/healthz", timeout=10).json()
    return dict(health["dependencies"]["auth_server"])


def test_a_client_gone_during_the_check_is_handled(
    siesta: Launcher, auth_server: AuthServer
) -> None:
    """Clients that close while the auth server thinks leave nothing behind: once it
    answers again, requests are served, and nothing was started for the ones gone."""
    proc = _start(siesta, auth_server.url, forward={"timeout": "3s"})
    auth_server.delay = 1.0
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            sock.sendall(
                b"GET /s/alice/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-secret\r\n\r\n"
            )
    wait_for(lambda: len(auth_server.calls) >= 1, what="the auth server to be asked")
    auth_server.delay = 0.0
    with httpx.Client(timeout=30) as http:
        answer = http.get(proc.url("bob"), headers={"Authorization": "Bearer bob-secret"})
    assert answer.status_code == 200
    assert proc.proc.poll() is None
    assert proc.start_count() == 1  # bob's; alice's requests went away before the answer
