"""The two stores behave alike: SQLite (on its threads) and Redis (a real redis-server).

Each test runs on both: batches, the fence that keeps a newer record from being
overwritten, event queries, pruning by retention, and a store whose data is lost
(the SQLite file deleted, Redis restarted empty) being noticed and recreated. Then
how siesta connects to Redis: TLS (`rediss://`), the password from a file or from the
environment, and what a wrong or missing one gives.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from siesta.config import StoreConf
from siesta.core.model import Endpoint, State, Transition
from siesta.health import Health
from siesta.store import open_store
from siesta.store.base import Batch, Checked, Registration, SessionRecord, Store
from siesta.store.writer import Recorder

from .conftest import Launcher, SiestaProcess
from .redis_server import RedisServer, running_redis


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open, empty store of each kind."""
    if request.param == "sqlite":
        opened = open_store(StoreConf(location=str(tmp_path / "state.db")), "test")
        await opened.open()
        await opened.check()
        yield opened
        await opened.close()
        return
    with running_redis(tmp_path / "redis") as server:
        opened = open_store(StoreConf(location=server.url), "test")
        opened.server = server  # type: ignore[attr-defined]  # for the loss test
        await opened.open()
        await opened.check()
        yield opened
        await opened.close()


def _registered(*ids: str) -> Batch:
    return Batch(registered={sid: Registration("web", {"tier": "gold"}, 100.0) for sid in ids})


def _event(sid: str, at: float, old: State, new: State) -> Transition:
    return Transition(sid, at, old, new, f"{old} to {new}", 0.5 if new is State.AWAKE else None)


async def test_a_batch_registers_records_and_logs(store: Store) -> None:
    """Registered sessions are ASLEEP; a record and events of the same batch land
    together; last_seen only moves forward; a deleted session is gone."""
    await store.write(_registered("alice", "bob", "carol"))
    awake = SessionRecord(
        "alice", "web", {"tier": "gold"}, State.AWAKE, Endpoint("127.0.0.1", 4000), 42, 7.5,
        created=100.0, updated=101.0, fence=1,
    )  # fmt: skip
    batch = Batch(
        records={"alice": awake},
        events=[_event("alice", 101.0, State.ASLEEP, State.WAKING)],
        last_seen={"alice": 150.0},
    )
    batch.delete("carol")
    await store.write(batch)
    await store.write(Batch(last_seen={"alice": 120.0}))
    records = {r.id: r for r in await store.sessions()}
    assert set(records) == {"alice", "bob"}
    assert records["bob"].state is State.ASLEEP
    assert records["bob"].labels == {"tier": "gold"}
    alice = records["alice"]
    assert (alice.state, alice.endpoint, alice.pid, alice.pid_started) == (
        State.AWAKE, Endpoint("127.0.0.1", 4000), 42, 7.5,
    )  # fmt: skip
    assert (alice.fence, alice.last_seen) == (1, 150.0)


async def test_an_older_fence_never_overwrites_a_newer_record(store: Store) -> None:
    """A late write from a wake that lost its lease (older fence) is ignored."""
    await store.write(_registered("alice"))
    newer = SessionRecord("alice", "web", state=State.AWAKE, fence=3, created=100.0)
    stale = SessionRecord("alice", "web", state=State.ASLEEP, fence=2, created=100.0)
    await store.write(Batch(records={"alice": newer}))
    await store.write(Batch(records={"alice": stale}))
    (alice,) = await store.sessions()
    assert (alice.state, alice.fence) == (State.AWAKE, 3)


async def test_events_by_session_time_and_limit_and_pruning(store: Store) -> None:
    """Events come oldest first, filtered by session and `since`, cut at `limit`; prune
    removes those before the cut-off only."""
    now = 1_700_000_000.0
    events = [_event(sid, now + i, State.ASLEEP, State.WAKING) for i, sid in enumerate("abab")]
    await store.write(Batch(events=events))
    assert await store.events() == events
    assert await store.events("a") == [events[0], events[2]]
    assert await store.events(since=now + 1) == events[2:]
    assert await store.events(limit=3) == events[:3]
    old = _event("a", 1000.0, State.AWAKE, State.STOPPING)
    if store.kind == "sqlite":  # Redis orders its stream by arrival, so old ones come first
        await store.write(Batch(events=[old]))
        assert await store.prune(now) == 1
        assert await store.events() == events


async def test_a_lost_store_is_noticed_and_recreated(store: Store) -> None:
    """The SQLite file deleted, or Redis restarted empty: `check` says the data is lost
    (once), and the store works again, empty."""
    await store.write(_registered("alice"))
    assert not (await store.check()).lost
    if store.kind == "sqlite":
        path = Path(getattr(store, "path"))  # noqa: B009
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            name.unlink(missing_ok=True)
    else:
        server: RedisServer = getattr(store, "server")  # noqa: B009
        server.restart()
    checked = await _check_until_answered(store)
    assert checked.lost
    assert checked.detail
    assert not (await store.check()).lost
    assert await store.sessions() == []
    await store.write(_registered("bob"))
    assert [r.id for r in await store.sessions()] == ["bob"]


async def _check_until_answered(store: Store) -> Checked:
    """`check`, retried while a restarted Redis refuses the first connection."""
    for _ in range(50):
        try:
            return await store.check()
        except Exception:  # the client reconnects on the next call
            continue
    return await store.check()


async def test_a_writer_without_retention_waits_instead_of_spinning(store: Store) -> None:
    """With no retention, pruning is never due: the idle writer waits for work or its next
    check (once per check_every) instead of turning the loop (a bug once cost a core)."""
    recorder = Recorder(store, Health(), check_every=3600.0)
    await recorder._check()  # the first check is due at once; the next in an hour
    idle = asyncio.create_task(recorder._idle())
    for _ in range(50):  # a spinning writer's idle wait ends within a turn or two
        await asyncio.sleep(0)
    assert not idle.done()
    recorder.register("alice", "web", {}, 100.0)  # work ends the wait at once
    await asyncio.wait_for(idle, 10.0)


# -- connecting to Redis: TLS, and the password from a file or the environment ---------


def _redis_store(server: RedisServer, **conf: Any) -> dict[str, Any]:
    # an instance of its own: backends live in cgroups named after it, tests run side by side
    return {"store": {"location": server.url, **conf}, "instance": f"conn-{server.port}"}


def _woken_through(run: SiestaProcess, server: RedisServer) -> None:
    """A wake through siesta works, and Redis (read with the same password) holds it."""
    answer = httpx.get(run.url("alice"), timeout=30)
    assert (answer.status_code, answer.headers["x-siesta-wake"]) == (200, "cold")
    run.settle()
    assert server.client().hget(f"siesta:conn-{server.port}:s:alice", "state") == "AWAKE"


def test_rediss_with_the_password_in_a_file(siesta: Launcher, tmp_path: Path) -> None:
    """`rediss://` to a redis-server that speaks only TLS and asks for a client
    certificate (CA and certificates in the URL's query, as redis-py reads them), with
    the password in a file (a mounted Secret; its trailing newline ignored)."""
    with running_redis(tmp_path / "redis", password="s3cret-file", tls=True) as server:
        assert server.url.startswith("rediss://")
        secret = tmp_path / "redis-password"
        secret.write_text("s3cret-file\n")
        run = siesta(extra=_redis_store(server, password_file=str(secret)))
        _woken_through(run, server)
        assert _health(run)["dependencies"]["store"]["mode"] == "ok"


def test_the_password_from_the_environment(siesta: Launcher, tmp_path: Path) -> None:
    """The password in an environment variable works; a wrong one is not fatal but says
    why in /healthz (the store degraded: invalid password) and wakes are refused with
    503 + Retry-After; an unset variable stops `siesta up` at once, naming the setting."""
    with running_redis(tmp_path / "redis", password="s3cret-env") as server:
        conf = _redis_store(server, password_env="REDIS_PASSWORD")
        run = siesta(extra=conf, env={"REDIS_PASSWORD": "s3cret-env"})
        _woken_through(run, server)
        run.stop()
        wrong = siesta(extra=conf, env={"REDIS_PASSWORD": "wrong"}, port=run.port)
        refused = httpx.get(wrong.url("alice"), timeout=30)
        assert (refused.status_code, int(refused.headers["retry-after"]) >= 1) == (503, True)
        store = _health(wrong)["dependencies"]["store"]
        assert (store["mode"], "password" in store["detail"].lower()) == ("degraded", True)
    environ = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    done = subprocess.run(
        [sys.executable, "-m", "siesta", "up", "-c", str(run.config)],
        capture_output=True, text=True, env=environ, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "store.password_env: $REDIS_PASSWORD is not set" in done.stderr


def _health(run: SiestaProcess) -> dict[str, Any]:
    answer = httpx.get(f"http://127.0.0.1:{run.admin_port}/healthz", timeout=10)
    result: dict[str, Any] = answer.json()
    return result


def test_a_redis_replica_keeps_its_own_files_in_local_dir(tmp_path: Path) -> None:
    """With Redis, a replica's own files (backend logs, the admin token) go to
    `store.local_dir` when set (relative to the config's folder; for a read-only
    ConfigMap), beside the config otherwise; with SQLite the setting is refused, naming
    it (its files are beside the database)."""
    from siesta.config import ConfigError, parse_config

    base = "templates: {web: {command: [sh]}}\nstore: {location: 'redis://r:6379/0'%s}\n"
    kept = parse_config(base % ", local_dir: run/siesta", base_dir=tmp_path)
    assert (kept.state_dir, kept.log_dir) == (tmp_path / "run/siesta", tmp_path / "run/siesta/logs")
    assert parse_config(base % "", base_dir=tmp_path).state_dir == tmp_path / ".siesta"
    sqlite = "templates: {web: {command: [sh]}}\nstore: {location: s.db, local_dir: x}\n"
    with pytest.raises(ConfigError, match="local_dir is for a Redis store"):
        parse_config(sqlite, base_dir=tmp_path)
