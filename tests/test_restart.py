"""Process lifecycle of siesta itself: restart re-adopts, shutdown leaves no orphans,
a bad config is refused before anything starts."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil

from siesta.core.model import State
from siesta.store.sqlite import SqliteStore

from .conftest import Launcher, wait_for


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_restart_after_kill_9_readopts_the_running_backend(siesta: Launcher) -> None:
    """siesta killed with SIGKILL leaves alice's backend running; the next siesta adopts
    it (same pid, no second start) and serves it warm."""
    first = siesta()
    assert httpx.get(first.url("alice"), timeout=30).status_code == 200
    pid = first.records()["alice"].pid
    assert pid is not None
    first.stop(signal.SIGKILL)
    assert _running(pid)
    second = siesta(port=first.port)
    assert second.state("alice") is State.AWAKE
    assert second.records()["alice"].pid == pid
    response = httpx.get(second.url("alice"), timeout=30)
    assert response.headers["x-siesta-wake"] == "warm"
    assert response.text.endswith(f"pid {pid}\n")
    assert second.start_count() == 1
    assert "re-adopted" in second.events("alice")[-1].reason


def test_restart_does_not_adopt_a_reused_pid(siesta: Launcher) -> None:
    """A stored pid that now belongs to another process (start time differs) is not
    adopted: the session is recorded asleep and the stranger is left alone."""
    first = siesta()
    assert httpx.get(first.url("alice"), timeout=30).status_code == 200
    pid = first.records()["alice"].pid
    assert pid is not None
    first.stop(signal.SIGKILL)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        psutil.Process(pid).kill()
        store = SqliteStore(first.state_dir / "state.db")
        record = store.sessions()[0]
        store.save(dataclasses.replace(record, pid=stranger.pid))
        store.close()
        second = siesta(port=first.port)
        assert second.state("alice") is State.ASLEEP
        assert "ended while siesta was down" in second.events("alice")[-1].reason
        assert _running(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_shutdown_stops_every_backend(siesta: Launcher) -> None:
    """SIGTERM drains and stops cleanly: exit code 0, no backend process left."""
    run = siesta(sessions={"alice": {"template": "web"}, "bob": {"template": "web"}})
    for name in ("alice", "bob"):
        assert httpx.get(run.url(name), timeout=30).status_code == 200
    pids = run.backend_pids()
    assert len(pids) == 2
    children = psutil.Process(run.proc.pid).children(recursive=True)
    assert {c.pid for c in children} >= set(pids)
    assert run.stop(signal.SIGTERM) == 0
    wait_for(lambda: not any(_running(p) for p in pids), what="backends to be gone")
    assert not any(_running(c.pid) for c in children)
    assert {r.state for r in run.records().values()} == {State.ASLEEP}


def test_shutdown_lets_a_request_in_flight_finish(siesta: Launcher) -> None:
    """A request in flight when SIGTERM arrives is answered before siesta exits."""
    run = siesta()
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    with httpx.Client(timeout=30) as client:
        request = client.build_request("GET", run.url("alice", "/slow?s=1"))
        result: dict[str, int] = {}
        worker = threading.Thread(
            target=lambda: result.update(code=client.send(request).status_code)
        )
        worker.start()
        backend = psutil.Process(run.records()["alice"].pid)
        wait_for(
            lambda: any(c.status == "ESTABLISHED" for c in backend.net_connections()),
            what="the slow request to reach the backend",
        )
        run.proc.send_signal(signal.SIGTERM)
        worker.join(30)
    assert result.get("code") == 200
    assert run.proc.wait(30) == 0


def test_bad_config_is_refused_with_key_and_line(tmp_path: Path) -> None:
    """`siesta up` on a bad file exits 2 and names file, line and key; nothing starts."""
    config = tmp_path / "siesta.yaml"
    config.write_text(
        "gateway:\n  listen: 127.0.0.1:8080\ntemplates:\n  web:\n    command: python3 -m x\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "siesta", "up", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "siesta.yaml:5 templates.web.command: must be a list of strings" in done.stderr
    assert not (tmp_path / ".siesta").exists()
