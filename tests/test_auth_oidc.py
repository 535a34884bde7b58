"""gateway.auth mode oidc against a real OpenID Connect provider (node-oidc-provider,
tests/oidc/) and a real siesta, with the login driven through the provider's forms.

A browser without a login is sent to the provider (authorization code with PKCE);
a script gets 401; neither wakes a session. After the login, a signed cookie carries
the claims, and the allow rule decides which sessions they reach: alice reaches
hers, not bob's, and an unknown session looks like bob's. The cookie never reaches
a backend; a forged one is refused; logout ends it; a provider that is down is 503.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from siesta.auth.signed import Signer

from .conftest import Launcher, SiestaProcess, free_port
from .oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider, log_in, running_provider

SESSIONS = {
    "alice": {"template": "web", "labels": {"owner": "alice@example.com"}},
    "bob": {"template": "web", "labels": {"owner": "bob@example.com"}},
}
OWNER_ONLY = "claims.email == session.labels.owner"
BROWSER = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def gateway_port() -> int:
    return free_port()


@pytest.fixture
def provider(tmp_path: Path, gateway_port: int) -> Iterator[Provider]:
    callback = f"http://127.0.0.1:{gateway_port}/.siesta/oidc/callback"
    with running_provider(tmp_path / "provider", [callback]) as running:
        yield running


def _start(
    siesta: Launcher, port: int, issuer: str, *, allow: str | None = OWNER_ONLY, **oidc: Any
) -> SiestaProcess:
    auth: dict[str, Any] = {
        "mode": "oidc",
        "oidc": {
            "issuer": issuer,
            "client_id": CLIENT_ID,
            "client_secret_env": "TEST_OIDC_SECRET",
            "timeout": "3s",
            **oidc,
        },
    }
    if allow is not None:
        auth["allow"] = allow
    return siesta(
        gateway={"auth": auth},
        sessions=SESSIONS,
        port=port,
        env={"TEST_OIDC_SECRET": CLIENT_SECRET},
    )


def _shape(response: httpx.Response) -> tuple[int, list[str], str]:
    names = sorted(k.lower() for k in response.headers if k.lower() != "x-siesta-event")
    return response.status_code, names, re.sub(r"event \w+", "event X", response.text)


def test_login_reaches_own_session_only(
    siesta: Launcher, provider: Provider, gateway_port: int
) -> None:
    """alice logs in at the provider and lands on her session; bob's session is 403
    for her and looks like an unknown one; bob, logged in, reaches his. The backend
    sees the client's other cookies, never siesta's login."""
    proc = _start(siesta, gateway_port, provider.issuer)
    with httpx.Client(timeout=30) as alice:
        landed = log_in(alice, proc.url("alice", "/headers?x=1"), "alice", provider)
        assert landed.status_code == 200, landed.text
        assert landed.url.path == "/s/alice/headers"
        assert landed.json()["query"] == "x=1"
        alice.cookies.set("app", "1", domain="127.0.0.1")
        seen = dict(alice.get(proc.url("alice", "/headers")).json()["headers"])
        assert "siesta_oidc" not in seen.get("cookie", "")
        assert "app=1" in seen["cookie"]
        other = alice.get(proc.url("bob"), headers=BROWSER)
        unknown = alice.get(proc.url("nobody"), headers=BROWSER)
        assert other.status_code == 403
        assert _shape(other) == _shape(unknown)
    with httpx.Client(timeout=30) as bob:
        own = log_in(bob, proc.url("bob"), "bob", provider)
        assert own.status_code == 200
        assert own.text.startswith("hello from bob")
    assert proc.start_count() == 2


def test_without_a_login_nothing_wakes(
    siesta: Launcher, provider: Provider, gateway_port: int
) -> None:
    """A browser is sent to the provider's authorization endpoint (code flow with PKCE
    S256, the flow in an HttpOnly cookie); a script or an XHR gets 401; an unknown
    session is answered the same; no backend starts."""
    proc = _start(siesta, gateway_port, provider.issuer)
    with httpx.Client(timeout=30) as http:
        browser = http.get(proc.url("alice", "/page"), headers=BROWSER)
        unknown = http.get(proc.url("nobody", "/page"), headers=BROWSER)
        script = http.get(proc.url("alice"), headers={"Accept": "application/json"})
        xhr = http.get(proc.url("alice"), headers={**BROWSER, "X-Requested-With": "XMLHttpRequest"})
        fetch = http.get(proc.url("alice"), headers={**BROWSER, "Sec-Fetch-Mode": "cors"})
        script_unknown = http.get(proc.url("nobody"), headers={"Accept": "application/json"})
    for answer in (browser, unknown):
        assert answer.status_code == 302
        target = urlsplit(answer.headers["location"])
        assert f"{target.scheme}://{target.netloc}" == provider.issuer
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert query["response_type"] == "code"
        assert query["code_challenge_method"] == "S256"
        assert query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == f"{proc.base}/.siesta/oidc/callback"
        flags = [f.strip() for f in answer.headers["set-cookie"].split(";")]
        assert flags[0].startswith("siesta_oidc_flow_")
        assert {"HttpOnly", "SameSite=Lax", "Path=/.siesta/oidc"} <= set(flags)
    for answer in (script, xhr, fetch):
        assert answer.status_code == 401
    assert _shape(script) == _shape(script_unknown)
    assert proc.start_count() == 0


def test_forged_cookies_and_stray_callbacks_are_refused(
    siesta: Launcher, provider: Provider, gateway_port: int
) -> None:
    """A login cookie signed with another key, or altered, is no login; a callback
    without its flow cookie, or with the provider's error, is 403; nothing starts."""
    proc = _start(siesta, gateway_port, provider.issuer)
    forged = Signer(b"not the key", "gateway login").sign(
        {"claims": {"sub": "alice", "email": "alice@example.com"}}, 3600
    )
    with httpx.Client(timeout=30) as http:
        for value in (forged, forged[:-2] + "xx", "garbage"):
            answer = http.get(proc.url("alice"), headers={"Cookie": f"siesta_oidc={value}"})
            assert answer.status_code == 401
        stray = http.get(f"{proc.base}/.siesta/oidc/callback?code=abc&state=def")
        assert stray.status_code == 403
        assert "log in again" in stray.text
        refused = http.get(f"{proc.base}/.siesta/oidc/callback?error=access_denied&state=x")
        assert refused.status_code == 403
        assert "access_denied" in refused.text
    assert proc.start_count() == 0


def test_logout_ends_the_login(siesta: Launcher, provider: Provider, gateway_port: int) -> None:
    """/.siesta/oidc/logout clears the cookie and sends the browser to the provider's
    end of session; the next request needs a login again."""
    proc = _start(siesta, gateway_port, provider.issuer)
    with httpx.Client(timeout=30) as http:
        assert log_in(http, proc.url("alice"), "alice", provider).status_code == 200
        out = http.get(f"{proc.base}/.siesta/oidc/logout")
        assert out.status_code == 303
        assert out.headers["location"].startswith(f"{provider.issuer}/session/end")
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert http.get(proc.url("alice")).status_code == 401


def test_without_allow_every_login_reaches_every_session(
    siesta: Launcher, provider: Provider, gateway_port: int
) -> None:
    """No allow rule: any login reaches any session; an unknown one is then a 404."""
    proc = _start(siesta, gateway_port, provider.issuer, allow=None)
    with httpx.Client(timeout=30) as http:
        assert log_in(http, proc.url("bob"), "carol", provider).status_code == 200
        assert http.get(proc.url("alice")).status_code == 200
        assert http.get(proc.url("nobody")).status_code == 404


def test_a_provider_that_is_down_is_503(siesta: Launcher, gateway_port: int) -> None:
    """siesta starts without the provider; a browser needing a login gets 503 with
    Retry-After, a script 401; nothing starts."""
    proc = _start(siesta, gateway_port, f"http://127.0.0.1:{free_port()}")
    with httpx.Client(timeout=30) as http:
        browser = http.get(proc.url("alice"), headers=BROWSER)
        script = http.get(proc.url("alice"))
    assert browser.status_code == 503
    assert browser.headers["retry-after"] == "5"
    assert script.status_code == 401
    assert proc.start_count() == 0
    health = httpx.get(f"http://127.0.0.1:{proc.admin_port}/healthz", timeout=10).json()
    assert health["dependencies"]["oidc_provider"]["mode"] == "degraded"


@pytest.mark.parametrize("routing", ["host", "header"])
def test_the_reserved_prefix_works_with_every_routing(
    siesta: Launcher, provider: Provider, gateway_port: int, routing: str
) -> None:
    """/.siesta/oidc/ is the gateway's on any host and without a routing header: with
    host or header routing a callback is answered by siesta, not routed to a session."""
    auth = {
        "mode": "oidc",
        "oidc": {"issuer": provider.issuer, "client_id": CLIENT_ID},
        "allow": OWNER_ONLY,
    }
    proc = siesta(gateway={"auth": auth, "routing": routing}, sessions=SESSIONS, port=gateway_port)
    headers = {"Host": "alice.localhost"} if routing == "host" else {"X-Siesta-Session": "alice"}
    with httpx.Client(timeout=30) as http:
        stray = http.get(f"{proc.base}/.siesta/oidc/callback?code=a&state=b", headers=headers)
        bare = http.get(f"{proc.base}/.siesta/oidc/callback?code=a&state=b")
        logout = http.get(f"{proc.base}/.siesta/oidc/logout", headers=headers)
    assert stray.status_code == 403
    assert bare.status_code == 403
    assert logout.status_code == 303
    assert proc.start_count() == 0
