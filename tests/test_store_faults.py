"""Faults of the store under a running siesta, on SQLite and on Redis. SQLite: a lock held
elsewhere, a full disk, the file deleted. Redis: a server that never answers, a full
one, one emptied. Both: siesta itself killed -9 mid-wake and restarted. In each, no
request hangs, no session is left half-way, the store catches up once it works again,
and a shutdown leaves nothing running.

siesta runs as a real process (`siesta up`) with real backends; the faults are real
too: another connection's `BEGIN EXCLUSIVE`, a small tmpfs filled up (or, where
mounting is not allowed, a file-size limit set on the siesta process), `unlink`; a real
redis-server stopped (SIGSTOP), given `maxmemory 1`, flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from siesta.config import StoreConf
from siesta.core.model import State
from siesta.store import open_store
from siesta.store.base import SessionRecord

from .conftest import Launcher, SiestaProcess, backend_template, wait_for
from .redis_server import RedisServer, running_redis

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


# -- the same faults on the Redis store ---------------------------------------------------
#
# One siesta on a real redis-server (tests/redis_up.py). Redis' faults: a server that
# accepts connections and never answers (SIGSTOP: a hung or swapping Redis), one that is
# full (maxmemory reached: every write refused, as a full disk refuses them), one emptied
# under a running siesta (FLUSHALL: the store file deleted). A Redis killed and restarted
# empty is in tests/test_replicas.py, with two replicas.


def _instance(port: int) -> str:
    """An instance name of this test's own: backends live in cgroups named after the
    instance, and tests run side by side (two siestas of one instance on one machine are
    replicas: one's shutdown stops the other's backends of the same session)."""
    return f"faults-{port}"


@pytest.fixture
def redis_up(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server of this test's own."""
    with running_redis(tmp_path / "redis") as server:
        yield server


def _on_redis(server: RedisServer) -> dict[str, Any]:
    return {"store": {"location": server.url}, "instance": _instance(server.port)}


def _redis_records(server: RedisServer) -> dict[str, SessionRecord]:
    """The sessions as Redis holds them (read with siesta's own store)."""

    async def read() -> dict[str, SessionRecord]:
        store = open_store(StoreConf(location=server.url), _instance(server.port))
        try:
            return {r.id: r for r in await store.sessions()}
        finally:
            await store.close()

    return asyncio.run(read())


def _mode(run: SiestaProcess, dependency: str) -> str:
    return str(_health(run)["dependencies"][dependency]["mode"])


def _refused_at_once(response: httpx.Response) -> None:
    """A cold request while Redis cannot grant the wake lease: 503 with Retry-After."""
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1


# Redis paused: each call siesta makes waits for its socket timeout, and the shutdown at the
# end makes several (a deadline for a loaded machine, not a speed claim).
@pytest.mark.timeout(300)
def test_a_redis_that_never_answers_holds_no_request(
    siesta: Launcher, redis_up: RedisServer
) -> None:
    """Redis accepts connections and never answers (SIGSTOP): a warm request is served, a
    cold one is answered 503 + Retry-After (a wake cannot be made safe without the lease),
    /healthz says both the store and the replicas' coordination are degraded. Once Redis
    answers again, both are ok, the cold session wakes and Redis holds it. Hung again at
    shutdown: siesta still stops every backend and exits."""
    run = siesta(sessions=TWO, extra=_on_redis(redis_up))
    assert httpx.get(run.url("bob"), timeout=30).status_code == 200
    with redis_up.paused():
        warm = httpx.get(run.url("bob"), timeout=30)
        assert (warm.status_code, warm.headers["x-siesta-wake"]) == (200, "warm")
        _refused_at_once(httpx.get(run.url("alice"), timeout=30))  # within wake_timeout
        wait_for(lambda: _mode(run, "replicas") == "degraded", 30, "the replicas degraded")
        wait_for(lambda: _mode(run, "store") == "degraded", 30, "the store degraded")
    wait_for(lambda: _health(run)["status"] == "ok", 30, "every dependency to be ok again")
    # a wake may still meet a connection left from the pause once (503 + Retry-After):
    # within a deadline, the cold session wakes
    cold = wait_for(
        lambda: (r := httpx.get(run.url("alice"), timeout=30)).status_code == 200 and r,
        60,
        "the cold session to wake once Redis answers",
    )
    assert cold.headers["x-siesta-wake"] == "cold"
    run.settle()
    assert {s: r.state for s, r in _redis_records(redis_up).items()} == {
        "alice": State.AWAKE,
        "bob": State.AWAKE,
    }
    with redis_up.paused():
        backends = _backends(run)
        assert len(backends) == 2
        assert run.stop(signal.SIGTERM, timeout=90) == 0
        wait_for(lambda: not any(_alive(p) for p in backends), what="every backend to stop")


def test_a_full_redis_strands_nothing(siesta: Launcher, redis_up: RedisServer) -> None:
    """Redis is full (maxmemory reached: every write refused with OOM): the awake session
    keeps serving, a cold one is refused at once with Retry-After, /healthz says degraded;
    once there is room, every dependency is ok, the refused session wakes, and Redis
    holds the state and the activity written meanwhile."""
    run = siesta(sessions=TWO, extra=_on_redis(redis_up))
    assert httpx.get(run.url("bob"), timeout=30).status_code == 200
    admin = redis_up.client()
    admin.config_set("maxmemory", "1")
    try:
        warm = httpx.get(run.url("bob"), timeout=30)
        assert (warm.status_code, warm.headers["x-siesta-wake"]) == (200, "warm")
        _refused_at_once(httpx.get(run.url("alice"), timeout=30))
        wait_for(lambda: _mode(run, "replicas") == "degraded", 30, "the replicas degraded")
        wait_for(lambda: _mode(run, "store") == "degraded", 30, "the store degraded")
        assert "maxmemory" in _health(run)["dependencies"]["store"]["detail"]
    finally:
        admin.config_set("maxmemory", "0")
    wait_for(lambda: _health(run)["status"] == "ok", 30, "every dependency to be ok again")
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    run.settle()
    records = _redis_records(redis_up)
    assert (records["alice"].state, records["bob"].state) == (State.AWAKE, State.AWAKE)
    assert records["bob"].last_seen is not None  # the warm request's activity, caught up
    _stops_cleanly(run)


def test_a_flushed_redis_is_noticed_and_written_again(
    siesta: Launcher, redis_up: RedisServer
) -> None:
    """Redis is emptied under a running siesta (FLUSHALL, as a store file deleted): it is
    noticed (log, /healthz, metric), siesta's state is written again (alice awake, bob
    asleep), and later wakes land in it."""
    run = siesta(sessions=TWO, extra=_on_redis(redis_up))
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    run.settle()
    redis_up.client().flushall()
    wait_for(lambda: _health(run)["dependencies"]["store"]["lost"] == 1, what="the loss to be seen")
    assert "STORE LOST: Redis lost siesta's data" in run.output()
    metrics = httpx.get(f"http://127.0.0.1:{run.admin_port}/metrics", timeout=10).text
    assert 'siesta_dependency_lost_total{dependency="store"} 1.0' in metrics
    run.settle()
    records = _redis_records(redis_up)
    assert (records["alice"].state, records["bob"].state) == (State.AWAKE, State.ASLEEP)
    warm = httpx.get(run.url("alice"), timeout=30)
    assert (warm.status_code, warm.headers["x-siesta-wake"]) == (200, "warm")
    assert httpx.get(run.url("bob"), timeout=30).headers["x-siesta-wake"] == "cold"
    run.settle()
    assert _redis_records(redis_up)["bob"].state is State.AWAKE
    _stops_cleanly(run)


# -- siesta itself killed mid-wake, on either store -----------------------------------------

SLOW = str(Path(__file__).with_name("tiny_backend.py"))


@pytest.mark.parametrize("then", ["a request", "nothing"])
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_killed_mid_wake_and_restarted(
    kind: str, then: str, siesta: Launcher, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """siesta is killed -9 while a backend it started is still starting (its pid already
    recorded), and a new siesta is started on the same store. Then either a request comes:
    it is answered, by the only backend of the session alive; or nothing comes: the
    backend left running is stopped all the same (at once on SQLite; on Redis once the
    dead replica's wake lease has expired and no request took the wake over) and the
    session is recorded asleep. Either way a clean shutdown leaves nothing running: no
    orphan, never two backends."""
    extra: dict[str, Any] = {}
    server: RedisServer | None = None
    if kind == "redis":
        server = request.getfixturevalue("redis_up")
        extra = _on_redis(server)
        extra["store"]["lease_ttl"] = "3s"
    slow = backend_template(
        command=[sys.executable, "-S", SLOW, "{port}", "{session}", "3"], stop_grace="2s"
    )
    config = {"templates": {"web": slow}, "sessions": {"alice": {"template": "web"}}}
    first = siesta(**config, extra=extra)
    waiting = threading.Thread(target=_get_quietly, args=(first.url("alice"),), daemon=True)
    waiting.start()
    started = wait_for(lambda: _starts(tmp_path), what="the backend to be started")
    first.settle()  # the pid is in the store: a crash now must orphan nothing
    first.stop(signal.SIGKILL)
    waiting.join(30)
    (backend,) = started
    assert _alive(backend)  # left running by the crash
    second = siesta(**config, extra=extra, port=first.port)
    if then == "a request":
        answer = httpx.get(second.url("alice"), timeout=60)
        assert answer.status_code == 200
        serving = int(answer.text.rsplit(" pid ", 1)[1])
        alive = [pid for pid in _starts(tmp_path) if _alive(pid)]
        assert alive == [serving]  # the one started before the crash (adopted) or a new one
    else:
        wait_for(lambda: not _alive(backend), 60, "the backend left running to be stopped")

        def recorded() -> State:  # the stop comes first, then the record of it
            second.settle()
            records = _redis_records(server) if server is not None else second.records()
            return records["alice"].state

        wait_for(lambda: recorded() is State.ASLEEP, 30, "the session recorded asleep")
        assert _starts(tmp_path) == [backend]  # nothing was started instead
    assert second.stop(signal.SIGTERM, timeout=60) == 0
    wait_for(lambda: not any(_alive(p) for p in _starts(tmp_path)), what="no backend left")


def _starts(folder: Path) -> list[int]:
    """Pids of every backend started (tests/tiny_backend.py writes them at once)."""
    path = folder / "starts.txt"
    return [int(line.split()[0]) for line in path.read_text().splitlines()] if path.exists() else []


def _get_quietly(url: str) -> None:
    """A request whose siesta is killed under it: any outcome but a hang."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=30)


# Redis paused: each call siesta makes waits for its socket timeout, and the shutdown at the
# end makes several (a deadline for a loaded machine, not a speed claim).
@pytest.mark.timeout(300)
def test_siesta_starts_against_a_redis_that_never_answers(siesta: Launcher) -> None:
    """The store's address accepts connections and never answers a byte (a socket that
    listens and is never read: not a Redis at all). siesta still starts within a bounded
    time and listens, says in /healthz that the store and the replicas are degraded,
    answers a request for a sleeping session 503 + Retry-After, and stops cleanly."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)  # the kernel completes the connections; nobody reads them
        port = silent.getsockname()[1]
        url = f"redis://127.0.0.1:{port}/0"
        run = siesta(sessions=TWO, extra={"store": url, "instance": _instance(port)})
        _refused_at_once(httpx.get(run.url("alice"), timeout=60))
        health = _health(run)
        assert health["dependencies"]["store"]["mode"] == "degraded"
        wait_for(lambda: _mode(run, "replicas") == "degraded", 30, "the replicas degraded")
        assert run.stop(signal.SIGTERM, timeout=90) == 0
