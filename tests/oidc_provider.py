"""A real OpenID Connect provider for the tests: node-oidc-provider (tests/oidc/), run
as a subprocess on a free port, and a login driven with httpx through its forms.

The provider accepts any login name (its development login form, no password) and
gives the account <name> the claims sub=<name>, email=<name>@example.com, name.
`npm ci` installs it from tests/oidc/package-lock.json when it is not installed yet
(`make test` does it too).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from .conftest import free_port, wait_for

FOLDER = Path(__file__).with_name("oidc")
CLIENT_ID = "siesta"
CLIENT_SECRET = "siesta-test-secret"  # a test provider's client


def installed() -> None:
    """node-oidc-provider under tests/oidc/node_modules (npm ci when it is missing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("the OIDC tests need node and npm (make test installs them)")
    if not (FOLDER / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=FOLDER, check=True, timeout=600
        )


@dataclass
class Provider:
    """A running provider."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_provider(folder: Path, redirect_uris: list[str]) -> Iterator[Provider]:
    """The provider, with the client `siesta` allowed to come back to `redirect_uris`."""
    installed()
    port = free_port()
    clients = [
        {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirect_uris,
            "post_logout_redirect_uris": [],
        }
    ]
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "provider.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["node", str(FOLDER / "provider.mjs"), str(port), json.dumps(clients)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    provider = Provider(proc, port, log)
    try:
        wait_for(
            lambda: proc.poll() is not None or _answers(provider.issuer),
            timeout=60,
            what="the OIDC provider to listen",
        )
        assert proc.poll() is None, provider.output()
        yield provider
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _answers(issuer: str) -> bool:
    try:
        return httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=2).is_success
    except httpx.HTTPError:
        return False


_FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*method="post"', re.IGNORECASE)
_HIDDEN = re.compile(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"')


def log_in(http: httpx.Client, url: str, user: str, provider: Provider) -> httpx.Response:
    """Open `url` as a browser would, fill the provider's login (and consent) forms as
    `user`, and follow every redirect: the last answer (the page `url` leads to)."""
    browser = {"Accept": "text/html,application/xhtml+xml"}
    answer = http.get(url, headers=browser, follow_redirects=True)
    for _ in range(6):
        form = _FORM.search(answer.text)
        if answer.url.port != provider.port or form is None:
            return answer
        fields = dict(_HIDDEN.findall(answer.text))
        if fields.get("prompt") == "login":
            fields["login"] = user
        action = urljoin(str(answer.url), html.unescape(form[1]))
        answer = http.post(action, data=fields, headers=browser, follow_redirects=True)
    raise AssertionError(f"the login did not finish: {answer.url}\n{answer.text[:500]}")
