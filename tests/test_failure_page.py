"""A session whose backend cannot start: the browser's failure page, the reason in the
API and `siesta status`, the event id; a real siesta and a real failing backend."""

from __future__ import annotations

import sys

import httpx
import pytest

from .admin import client, launch_admin
from .conftest import Launcher, backend_template, wait_for
from .test_cli_api import cli

CRASH = "import sys; print('boom: the database is gone', flush=True); sys.exit(3)"
PAGE = {"Accept": "text/html"}


def _broken(**extra: object) -> dict[str, object]:
    return backend_template(
        command=[sys.executable, "-c", CRASH],
        max_start_failures=1,
        failure_backoff="60s",
        **extra,
    )


def test_a_browser_gets_the_failure_page_with_the_log_and_a_countdown(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What failed, the exit code and the end of the backend's log, a countdown that
    reloads on the backoff (Retry-After, meta refresh), an event id; the API and
    `siesta status` give the reason too."""
    run, base = launch_admin(siesta, monkeypatch, templates={"web": _broken()})
    page = httpx.get(run.url("alice"), headers=PAGE, timeout=30)
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert "could not start" in page.text
    assert "boom: the database is gone" in page.text
    assert "backend exited with code 3" in page.text
    retry = int(page.headers["retry-after"])
    assert retry >= 1
    assert f'http-equiv="refresh" content="{retry}"' in page.text
    assert page.headers["x-siesta-event"] in page.text
    event = page.headers["x-siesta-event"]  # logged as the page is sent: not before
    wait_for(lambda: event in run.output(), timeout=10, what="the event id in the log")
    again = httpx.get(run.url("alice"), headers=PAGE, timeout=30)  # in backoff: same page
    assert again.status_code == 503
    assert int(again.headers["retry-after"]) > 30
    with client(base) as api:
        alice = api.get("/api/sessions/alice").json()
    assert alice["state"] == "FAILED"
    assert "exited before it was ready" in alice["failure"]
    status = cli(run, "status")
    assert status.returncode == 0, status.stderr
    assert "last failure" in status.stdout
    assert "exited before it was ready" in status.stdout
    api_client = httpx.get(run.url("alice"), timeout=30)  # not a browser: the short answer
    assert api_client.status_code == 503
    assert "boom" not in api_client.text


def test_the_log_can_be_left_out(siesta: Launcher) -> None:
    """failure_log_lines: 0 shows the reason and the countdown, not the log."""
    run = siesta(templates={"web": _broken(failure_log_lines=0)})
    page = httpx.get(run.url("alice"), headers=PAGE, timeout=30)
    assert page.status_code == 503
    assert "could not start" in page.text
    assert "boom" not in page.text
    assert 'id="countdown"' in page.text
