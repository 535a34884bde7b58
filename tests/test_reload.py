"""The config file changes: sessions it drops go at restart (unless created through the
API), and SIGHUP applies a valid new file or refuses a bad one; a real siesta, real signals."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest
import yaml

from .admin import client, launch_admin
from .conftest import Launcher, SiestaProcess, backend_template, wait_for

TWO = {"alice": {"template": "web"}, "bob": {"template": "web"}}


def _rewrite(run: SiestaProcess, **changes: Any) -> None:
    config = yaml.safe_load(run.config.read_text())
    config.update(changes)
    run.config.write_text(yaml.safe_dump(config))


def test_sessions_dropped_from_the_file_go_at_restart_but_api_ones_stay(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob leaves the file: after a restart he is gone, with a log line; carol, made
    through the API, and alice stay."""
    run, base = launch_admin(siesta, monkeypatch, sessions=TWO)
    with client(base) as api:
        assert api.post("/api/sessions", json={"id": "carol", "template": "web"}).status_code == 201
    run.stop()
    again, base = launch_admin(
        siesta, monkeypatch, sessions={"alice": {"template": "web"}}, port=run.port
    )
    assert set(again.records()) == {"alice", "carol"}
    assert "bob: removed: the config file no longer lists it" in again.output()
    with client(base) as api:
        assert api.get("/api/sessions/bob").status_code == 404
        assert api.get("/api/sessions/carol").status_code == 200


def test_sighup_applies_a_valid_file_and_refuses_a_bad_one(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP with a new valid file: dave is served, bob is gone. SIGHUP with a file with a
    placeholder typo: refused with its line, and the running config keeps serving."""
    run, _ = launch_admin(siesta, monkeypatch, sessions=TWO)
    _rewrite(run, sessions={"alice": {"template": "web"}, "dave": {"template": "web"}})
    run.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in run.output(), what="the reload")
    assert httpx.get(run.url("dave"), timeout=30).text.startswith("hello from dave")
    assert httpx.get(run.url("bob"), timeout=10).status_code == 404

    broken = backend_template(command=["python3", "{prot}"])
    _rewrite(run, templates={"web": broken}, sessions={"erin": {"template": "web"}})
    run.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "the running config is kept" in run.output(), what="the refusal")
    assert f"reload refused: {run.config}:" in run.output()
    assert "unknown placeholder {prot}" in run.output()
    assert httpx.get(run.url("erin"), timeout=10).status_code == 404
    assert httpx.get(run.url("alice"), timeout=30).text.startswith("hello from alice")
    assert run.proc.poll() is None
