"""`siesta logs ID` and GET /api/sessions/{id}/logs: a session's backend log, whatever
runs it (here a local process; containers are in test_docker.py)."""

from __future__ import annotations

import httpx
import pytest

from .admin import client, launch_admin
from .conftest import Launcher
from .test_cli_api import cli


def test_logs_show_a_local_backends_output(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a wake, the API and the CLI give the backend's output (its start line);
    --lines bounds it; an unknown session is a 404 and a one-line CLI error."""
    run, base = launch_admin(siesta, monkeypatch)
    with client(base) as api:
        assert api.get("/api/sessions/alice/logs").json()["log"] == ""
        assert httpx.get(run.url("alice"), timeout=30).status_code == 200
        answer = api.get("/api/sessions/alice/logs", params={"lines": 1}).json()
        assert answer["lines"] == 1
        assert answer["log"].count("\n") == 0
        assert api.get("/api/sessions/nobody/logs").status_code == 404
        assert api.get("/api/sessions/alice/logs", params={"lines": 0}).status_code == 422
    shown = cli(run, "logs", "alice")
    assert shown.returncode == 0, shown.stderr
    assert '"starting": "alice"' in shown.stdout
    missing = cli(run, "logs", "nobody")
    assert missing.returncode == 1
    assert "no session 'nobody'" in missing.stderr
