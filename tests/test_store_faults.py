"""Faults of the SQLite store under a running siesta: a lock held elsewhere, a full
disk, the file deleted. In each, no request hangs, no session is left half-way, the
store catches up once it works again, and a shutdown leaves nothing running.

siesta runs as a real process (`siesta up`) with real backends; the faults are real
too: another connection's `BEGIN EXCLUSIVE`, a small tmpfs filled up (or, where
mounting is not allowed, a file-size limit set on the siesta process), `unlink`.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from siesta.core.model import State

from .conftest import Launcher, SiestaProcess, wait_for

TWO = {"alice": {"template": "web"}, "bob": {"template": "web"}}


def _health(run: SiestaProcess) -> dict[str, Any]:
    answer = httpx.get(f"http://127.0.0.1:{run.admin_port}/healthz", timeout=10)
    assert answer.status_code == 200  # degraded is not dead: liveness holds
    result: dict[str, Any] = answer.json()
    return result


def _store_mode(run: SiestaProcess) -> str:
    return str(_health(run)["dependencies"]["store"]["mode"])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _backends(run: SiestaProcess) -> list[int]:
    """The pids of siesta's running backends (its children), read from the process tree."""
    return [c.pid for c in psutil.Process(run.proc.pid).children() if _alive(c.pid)]


def _stops_cleanly(run: SiestaProcess) -> None:
    backends = _backends(run)
    assert backends
    assert run.stop(signal.SIGTERM, timeout=60) == 0
    wait_for(lambda: not any(_alive(p) for p in backends), what="every backend to stop")


def test_a_locked_store_holds_no_request_and_catches_up(siesta: Launcher, tmp_path: Path) -> None:
    """Another connection holds SQLite's write lock longer than the busy timeout: a cold
    and a warm request are both answered while it is held, /healthz says the store is
    degraded, and once the lock is gone the store holds the wake. Locked again at
    shutdown: siesta still stops every backend and exits."""
    run = siesta(sessions=TWO)
    assert httpx.get(run.url("bob"), timeout=30).status_code == 200
    locker = sqlite3.connect(run.state_dir / "state.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        cold = httpx.get(run.url("alice"), timeout=30)
        warm = httpx.get(run.url("bob"), timeout=30)
        assert (cold.status_code, cold.headers["x-siesta-wake"]) == (200, "cold")
        assert (warm.status_code, warm.headers["x-siesta-wake"]) == (200, "warm")
        wait_for(lambda: _store_mode(run) == "degraded", what="the store to be degraded")
        assert "locked" in _health(run)["dependencies"]["store"]["detail"]
    finally:
        locker.execute("ROLLBACK")
    wait_for(lambda: _store_mode(run) == "ok", what="the store to be ok again")
    assert run.state("alice") is State.AWAKE
    assert [e.new for e in run.events("alice")] == [State.WAKING, State.AWAKE]
    locker.execute("BEGIN EXCLUSIVE")
    try:
        _stops_cleanly(run)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert "did not take the last" in run.output()


@contextlib.contextmanager
def _small_disk(folder: Path) -> Iterator[bool]:
    """A 2 MiB tmpfs on `folder` when mounting is allowed (True), else nothing (False)."""
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` up to its last byte; the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[bool]:
    """siesta's state folder (tmp_path/state) on a small file system of its own; the
    backends' logs elsewhere (a backend that cannot print dies: not the fault tested)."""
    with _small_disk(tmp_path / "state") as mounted:
        (tmp_path / "logs").mkdir()
        (tmp_path / "state" / "logs").symlink_to(tmp_path / "logs")
        yield mounted


def test_a_full_disk_strands_nothing(small_disk: bool, siesta: Launcher, tmp_path: Path) -> None:
    """The store's disk is full (a filled tmpfs; or, where mounting is refused, a file-size
    limit on siesta): a sleeping session still wakes and is served, the store is degraded,
    and once there is room the state and the activity are caught up."""
    run = siesta(sessions=TWO)
    state = tmp_path / "state"
    if small_disk:
        filler = _fill(state)
    else:  # no mount here: no file of siesta's may grow (Python ignores SIGXFSZ)
        sizes = [f.stat().st_size for f in state.glob("state.db*")]
        limit = (max(sizes), psutil.RLIM_INFINITY)  # the soft limit only: it can be lifted
        psutil.Process(run.proc.pid).rlimit(psutil.RLIMIT_FSIZE, limit)
    response = httpx.get(run.url("alice"), timeout=30)
    assert response.status_code == 200
    wait_for(lambda: _store_mode(run) == "degraded", what="the store to be degraded")
    if small_disk:
        filler.unlink()
    else:
        unlimited = (psutil.RLIM_INFINITY, psutil.RLIM_INFINITY)
        psutil.Process(run.proc.pid).rlimit(psutil.RLIMIT_FSIZE, unlimited)
    wait_for(lambda: _store_mode(run) == "ok", what="the store to be ok again")
    record = run.records()["alice"]
    assert record.state is State.AWAKE
    wait_for(lambda: run.records()["alice"].last_seen is not None, what="activity to be stored")
    assert [e.new for e in run.events("alice")] == [State.WAKING, State.AWAKE]
    _stops_cleanly(run)


def test_a_deleted_store_file_is_reported_and_written_again(siesta: Launcher) -> None:
    """The store file is deleted under a running siesta: it is noticed (log, /healthz,
    metric), recreated with the state siesta holds (alice awake), and later transitions
    land in the new file."""
    run = siesta(sessions=TWO)
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    run.settle()
    db = run.state_dir / "state.db"
    for leftover in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
    wait_for(lambda: _health(run)["dependencies"]["store"]["lost"] == 1, what="the loss to be seen")
    assert "STORE LOST: the store file" in run.output()
    metrics = httpx.get(f"http://127.0.0.1:{run.admin_port}/metrics", timeout=10).text
    assert 'siesta_dependency_lost_total{dependency="store"} 1.0' in metrics
    assert db.exists()
    assert run.state("alice") is State.AWAKE
    assert run.state("bob") is State.ASLEEP
    assert httpx.get(run.url("bob"), timeout=30).status_code == 200
    assert [e.new for e in run.events("bob")] == [State.WAKING, State.AWAKE]
    _stops_cleanly(run)
    assert {r.state for r in run.records().values()} == {State.ASLEEP}
