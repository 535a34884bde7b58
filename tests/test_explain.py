"""`GET /api/sessions/{id}/explain`, `siesta policy explain` and `siesta status`,
against a real `siesta up` with real backends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from .admin import client, launch_admin
from .conftest import Launcher, SiestaProcess, backend_template, wait_for

POLICIES = {
    "default": {
        "sleep_when": 'idle_for > duration("15m") && connections == 0 && inflight == 0',
        "keep_awake_when": 'labels.tier == "gold"',
        "min_awake": "2m",
        "max_lifetime": "12h",
    },
    "busy": {"sleep_when": 'cpu_percent < 50.0 && idle_for > duration("1h")'},
}


def _template(policy: str) -> dict[str, Any]:
    template = backend_template(policy=policy)
    del template["idle_timeout"]  # a policy decides instead
    return template


def _launch(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> tuple[SiestaProcess, str]:
    return launch_admin(
        siesta,
        monkeypatch,
        policies=POLICIES,
        templates={"web": _template("default"), "cruncher": _template("busy")},
        sessions={
            "alice": {"template": "web", "labels": {"tier": "silver"}},
            "bob": {"template": "web", "labels": {"tier": "gold"}},
            "carol": {"template": "cruncher"},
        },
    )


def _rules(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["key"]: rule for rule in answer["rules"]}


def test_explain_an_awake_session(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """Just woken: each rule in the order the policy looks at them, with the values of
    the signals it reads and whether it holds; min_awake keeps it awake; it would sleep
    15m (+1 ms) after its last byte, and the next check is then (a predictable rule)."""
    run, base = _launch(siesta, monkeypatch)
    with client(base) as api:
        assert api.post("/api/sessions/alice/wake").status_code == 200
        before = time.time()
        answer = api.get("/api/sessions/alice/explain").json()
    assert (answer["session"], answer["state"], answer["policy"]) == ("alice", "AWAKE", "default")
    assert [r["key"] for r in answer["rules"]] == [
        "max_lifetime",
        "min_awake",
        "keep_awake_when",
        "sleep_when",
    ]
    rules = _rules(answer)
    assert rules["max_lifetime"]["holds"] is False
    assert rules["max_lifetime"]["source"] == "awake_for >= 12h"
    assert rules["min_awake"]["holds"] is True
    assert rules["keep_awake_when"] == {
        "key": "keep_awake_when",
        "source": 'labels.tier == "gold"',
        "effect": "stay awake, whatever sleep_when says",
        "values": {"labels": {"tier": "silver"}},
        "holds": False,
        "error": None,
    }
    sleep_when = rules["sleep_when"]
    assert sleep_when["holds"] is False
    assert list(sleep_when["values"]) == ["idle_for", "connections", "inflight"]
    assert sleep_when["values"]["connections"] == 0
    assert sleep_when["values"]["inflight"] == 0
    idle = sleep_when["values"]["idle_for"]
    assert 0 <= idle < 60
    signals = answer["signals"]
    assert signals["labels"] == {"tier": "silver"}
    assert signals["idle_for"] == idle
    assert signals["awake_for"] < 60
    decision = answer["decision"]
    assert decision["sleep"] is False
    assert decision["reason"].startswith("min_awake: awake for")
    assert decision["sleep_in"] == pytest.approx(900.001 - idle, abs=1e-3)
    assert decision["sleep_at"] == pytest.approx(before + decision["sleep_in"], abs=5)
    assert decision["next_check_in"] == pytest.approx(decision["sleep_in"], abs=1)
    assert decision["check_every"] is None  # predictable: checked exactly when due
    assert answer["note"] is None
    assert run.state("alice").value == "AWAKE"  # explaining changes nothing


def test_explain_keep_awake_and_a_provider_signal(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob is gold: keep_awake_when holds, so only max_lifetime will put it to sleep,
    12h after its wake, and that is its next check. carol's rule reads cpu_percent:
    before its first resource window explain says it is not measured yet; then it shows
    the real backend's memory (> 0), and the rule is re-checked every 30s."""
    _, base = _launch(siesta, monkeypatch)
    with client(base) as api:
        for sid in ("bob", "carol"):
            assert api.post(f"/api/sessions/{sid}/wake").status_code == 200
        bob = api.get("/api/sessions/bob/explain").json()
        early = api.get("/api/sessions/carol/explain").json()
        assert early["signals"]["memory_bytes"] > 0 or "no window yet" in early["note"]
        carol = wait_for(
            lambda: (a := api.get("/api/sessions/carol/explain").json())["note"] is None and a,
            timeout=20,
            what="carol's first resource window",
        )
    assert _rules(bob)["keep_awake_when"]["holds"] is True
    assert _rules(bob)["min_awake"]["holds"] is True
    awake_for = bob["signals"]["awake_for"]
    assert bob["decision"]["sleep_in"] == pytest.approx(12 * 3600 - awake_for, abs=1e-3)
    assert bob["decision"]["next_check_in"] == pytest.approx(bob["decision"]["sleep_in"], abs=1)
    assert [r["key"] for r in carol["rules"]] == ["sleep_when"]
    rule = _rules(carol)["sleep_when"]
    assert list(rule["values"]) == ["cpu_percent", "idle_for"]
    assert isinstance(rule["values"]["cpu_percent"], float)
    assert rule["holds"] is False  # idle for less than an hour
    assert carol["signals"]["memory_bytes"] > 1_000_000
    assert carol["decision"]["check_every"] == 30.0


def test_explain_an_asleep_session_and_errors(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asleep: the rules without values or verdicts, and a note saying why; an
    unknown session is 404 JSON."""
    _, base = _launch(siesta, monkeypatch)
    with client(base) as api:
        answer = api.get("/api/sessions/alice/explain").json()
        missing = api.get("/api/sessions/nobody/explain")
    assert answer["state"] == "ASLEEP"
    assert answer["signals"] is None
    assert answer["decision"] is None
    assert [r["holds"] for r in answer["rules"]] == [None] * 4
    assert "checked only while it is awake" in answer["note"]
    assert missing.status_code == 404
    assert missing.json() == {"error": "no session 'nobody'"}


def cli(run: SiestaProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m siesta ARGS -c <run's config>`, with a wide terminal for Rich."""
    return subprocess.run(
        [sys.executable, "-m", "siesta", *args, "-c", str(run.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_policy_explain_command(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command prints the policy, a row per rule with its values and verdict, the
    decision with its reason (brackets and all), and when it would sleep."""
    run, _ = _launch(siesta, monkeypatch)
    httpx.get(run.url("alice"), timeout=20)
    done = cli(run, "policy", "explain", "alice")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "alice (template web) is AWAKE; policy default" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "awake_for >= 12h" in rows["max_lifetime"]
    assert "no" in rows["max_lifetime"].split("│")[4]
    assert "yes" in rows["min_awake"].split("│")[4]
    assert "labels={tier: silver}" in rows["keep_awake_when"]
    assert "connections=0, inflight=0" in rows["sleep_when"]
    assert "decision: stay awake (min_awake: awake for" in out
    assert "would sleep in 15m" in out or "would sleep in 14m" in out
    assert "next policy check in" in out
    missing = cli(run, "policy", "explain", "nobody")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error no session 'nobody'"


def test_status_through_the_api_then_from_the_store(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While siesta runs, `status` shows idle, awake and next check from the API; once it
    stopped, what it stored, with a note saying so on stderr."""
    run, _ = _launch(siesta, monkeypatch)
    httpx.get(run.url("alice"), timeout=20)
    live = cli(run, "status")
    assert live.returncode == 0, live.stderr
    assert "next policy check" in live.stdout
    alice = next(line for line in live.stdout.splitlines() if "alice" in line).split("│")
    assert [cell.strip() for cell in alice[1:4]] == ["alice", "web", "AWAKE"]
    assert all(cell.strip() for cell in alice[4:7])  # idle for, awake for, next check
    bob = next(line for line in live.stdout.splitlines() if " bob " in line).split("│")
    assert bob[3].strip() == "ASLEEP"
    assert live.stderr == ""
    run.stop()
    wait_for(lambda: run.proc.poll() is not None, what="siesta to stop")
    stored = cli(run, "status")
    assert stored.returncode == 0, stored.stderr
    assert "siesta is not running" in stored.stderr
    assert "this is the state it last stored" in stored.stderr
    assert "alice" in stored.stdout
