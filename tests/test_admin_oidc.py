"""admin.auth mode oidc: the dashboard's login with a real OpenID Connect provider
(node-oidc-provider, tests/oidc/), its allow rule over the claims, and the admin token
still working for the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from siesta.auth.signed import Signer
from siesta.config import ConfigError, parse_config

from .admin import TOKEN
from .conftest import Launcher, SiestaProcess, free_port
from .oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider, log_in, running_provider

ADMINS = 'claims.email in ["ops@example.com"]'


@pytest.fixture
def admin_port() -> int:
    return free_port()


@pytest.fixture
def provider(tmp_path: Path, admin_port: int) -> Iterator[Provider]:
    callback = f"http://127.0.0.1:{admin_port}/ui/oidc/callback"
    with running_provider(tmp_path / "provider", [callback]) as running:
        yield running


def _start(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, admin_port: int, issuer: str
) -> SiestaProcess:
    monkeypatch.setenv("SIESTA_ADMIN_TOKEN", TOKEN)
    oidc = {"issuer": issuer, "client_id": CLIENT_ID, "client_secret_env": "TEST_OIDC_SECRET"}
    return siesta(
        gateway={"admin_listen": f"127.0.0.1:{admin_port}"},
        extra={"admin": {"auth": {"mode": "oidc", "oidc": oidc, "allow": ADMINS}}},
        env={"TEST_OIDC_SECRET": CLIENT_SECRET},
    )


def test_an_administrator_logs_in_with_the_provider(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, admin_port: int, provider: Provider
) -> None:
    """ops@example.com logs in through the provider, lands on the dashboard, and its
    cookie reaches the API (changes with X-Siesta-UI: 1, as with the token's login)."""
    _start(siesta, monkeypatch, admin_port, provider.issuer)
    base = f"http://127.0.0.1:{admin_port}"
    with httpx.Client(timeout=30) as http:
        page = http.get(f"{base}/ui/login")
        assert 'href="/ui/oidc/login"' in page.text
        landed = log_in(http, f"{base}/ui/oidc/login", "ops", provider)
        assert landed.status_code == 200, landed.text
        assert str(landed.url) == f"{base}/ui/"
        assert http.get(f"{base}/api/sessions").status_code == 200
        refused = http.post(f"{base}/api/sessions/alice/wake")
        assert refused.status_code == 403
        woken = http.post(f"{base}/api/sessions/alice/wake", headers={"X-Siesta-UI": "1"})
        assert woken.status_code == 200
        out = http.post(f"{base}/ui/logout")
        assert out.status_code == 303
        assert http.get(f"{base}/api/sessions").status_code == 401


def test_someone_the_rule_refuses_is_not_logged_in(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, admin_port: int, provider: Provider
) -> None:
    """alice@example.com is a real user of the provider but not an administrator: 403,
    and no cookie that opens the API."""
    _start(siesta, monkeypatch, admin_port, provider.issuer)
    base = f"http://127.0.0.1:{admin_port}"
    with httpx.Client(timeout=30) as http:
        answer = log_in(http, f"{base}/ui/oidc/login", "alice", provider)
        assert answer.status_code == 403
        assert "alice@example.com is not an administrator" in answer.text
        assert http.get(f"{base}/api/sessions").status_code == 401
        assert http.get(f"{base}/ui/", follow_redirects=False).status_code == 303


def test_the_token_still_works_and_forgeries_do_not(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, admin_port: int, provider: Provider
) -> None:
    """The CLI's bearer token works as before; a login cookie signed with another key
    opens nothing; a provider error at the callback is a 403 page."""
    _start(siesta, monkeypatch, admin_port, provider.issuer)
    base = f"http://127.0.0.1:{admin_port}"
    forged = Signer(b"another key", "admin login").sign({"claims": {"email": "ops@x"}}, 3600)
    with httpx.Client(timeout=30) as http:
        bearer = http.get(f"{base}/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200
        fake = http.get(f"{base}/api/sessions", headers={"Cookie": f"siesta_admin_oidc={forged}"})
        assert fake.status_code == 401
        error = http.get(f"{base}/ui/oidc/callback?error=access_denied&state=x")
        assert error.status_code == 403


def test_a_provider_that_is_down_is_503(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, admin_port: int
) -> None:
    """The dashboard's OIDC login with no provider: 503 with Retry-After; the token works."""
    _start(siesta, monkeypatch, admin_port, f"http://127.0.0.1:{free_port()}")
    base = f"http://127.0.0.1:{admin_port}"
    with httpx.Client(timeout=30) as http:
        answer = http.get(f"{base}/ui/oidc/login")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "5"
        bearer = http.get(f"{base}/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="siesta.yaml", base_dir=Path("."))
    return caught.value.problems


BASE = "templates:\n  web: {command: [x]}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "admin:\n  auth:\n    mode: oidc\n    allow: 'true'\n",
            "siesta.yaml:2 admin.auth.oidc: is required by mode oidc",
        ),
        (
            "admin:\n  auth:\n    mode: oidc\n    oidc: {issuer: 'http://x', client_id: a}\n",
            "siesta.yaml:2 admin.auth.allow: is required by mode oidc",
        ),
        (
            "admin:\n  auth:\n    mode: oidc\n    oidc: {issuer: 'http://x', client_id: a}\n"
            "    allow: 'claims.email =='\n",
            "siesta.yaml:5 admin.auth.allow: syntax error",
        ),
        (
            "gateway:\n  auth:\n    mode: forward_auth\n",
            "siesta.yaml:2 gateway.auth.forward_auth: is required by mode forward_auth",
        ),
        (
            "gateway:\n  auth:\n    mode: token\n    allow: 'true'\n",
            "siesta.yaml:4 gateway.auth.allow: only for mode forward_auth or oidc",
        ),
        (
            "gateway:\n  auth:\n    mode: oidc\n    oidc: {issuer: 'http://x', client_id: a}\n"
            "    allow: 'user == session.id'\n",
            "siesta.yaml:5 gateway.auth.allow: unknown variable 'user' (known: claims, session)",
        ),
        (
            "gateway:\n  auth:\n    mode: forward_auth\n    forward_auth: {url: 'http://x/'}\n"
            "    allow: 'claims.email == \"a\"'\n",
            "siesta.yaml:5 gateway.auth.allow: unknown variable 'claims' (known: headers,",
        ),
        (
            "gateway:\n  auth:\n    mode: basic\n",
            "siesta.yaml:3 gateway.auth.mode: must be 'none', 'token', 'forward_auth' or 'oidc'",
        ),
    ],
)
def test_auth_config_errors_name_the_key_and_line(text: str, expected: str) -> None:
    """Every auth setting that cannot work is refused at load, with its key and line."""
    problems = _problems(text + BASE)
    assert any(p.startswith(expected) for p in problems), problems


def test_admin_oidc_defaults_to_the_gateways_provider() -> None:
    """admin.auth mode oidc without its own oidc section uses gateway.auth.oidc's."""
    text = (
        "gateway:\n  auth:\n    mode: oidc\n    oidc: {issuer: 'http://idp', client_id: gw}\n"
        "admin:\n  auth: {mode: oidc, allow: 'claims.sub == \"root\"'}\n" + BASE
    )
    config = parse_config(text, source="siesta.yaml", base_dir=Path("."))
    conf: Any = config.admin_oidc
    assert conf.client_id == "gw"
    assert config.admin.auth.allow_rule is not None
    assert config.admin.auth.allow_rule.allows({"claims": {"sub": "root"}})
