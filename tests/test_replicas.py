"""Three siesta replicas on one machine sharing one real redis-server.

Each replica is a real `siesta up` process with its own config file that differs only
in its listen addresses; backends are real processes. The tests share one Redis and
one set of three replicas per test where it is honest (each test uses sessions of its
own), and kill -9 replicas or Redis where that is the point. Leases are the
default 10s, shorter (3s) where a test waits for a takeover.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from siesta.keda import externalscaler_pb2 as pb
from siesta.keda import externalscaler_pb2_grpc as pb_grpc
from siesta.providers.local import claim_port, lock_port

from .conftest import (
    accepts,
    backend_template,
    free_port,
    kill_groups,
    running_backends,
    wait_for,
)
from .redis_server import RedisServer, running_redis

LEASE = "10s"  # the default: a busy machine stalls a replica's loop for seconds
TINY = str(Path(__file__).with_name("tiny_backend.py"))


def _tiny(delay: float = 0.0, **extra: Any) -> dict[str, Any]:
    """tests/tiny_backend.py: hundreds of them fit in a test."""
    command = [sys.executable, "-S", TINY, "{port}", "{session}", str(delay)]
    return backend_template(command=command, stop_grace="2s", **extra)


@dataclass
class Replica:
    """One running replica."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    keda: int
    log: Path

    def url(self, session: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}/s/{session}{path}"

    def health(self) -> dict[str, Any]:
        answer = httpx.get(f"http://127.0.0.1:{self.admin}/healthz", timeout=10)
        result: dict[str, Any] = answer.json()
        return result

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Cluster:
    """Replicas sharing `redis`, all made from one config, in `folder`."""

    def __init__(
        self, folder: Path, redis: RedisServer, sessions: dict[str, Any], lease: str = LEASE
    ):
        self.lease = lease
        self.folder = folder
        self.redis = redis
        self.sessions = sessions
        self.replicas: list[Replica] = []
        self.all: list[Replica] = []

    def config(self, port: int, admin: int, keda: int) -> dict[str, Any]:
        return {
            "gateway": {
                "listen": f"127.0.0.1:{port}",
                "admin_listen": f"127.0.0.1:{admin}",
                "wake_timeout": "120s",  # 300 starts on a small busy machine take a while
                "wake_rate": "off",  # one test client wakes 300 sessions
            },
            "store": {"location": self.redis.url, "lease_ttl": self.lease},
            "keda": {"listen": f"127.0.0.1:{keda}"},
            "templates": {  # SIESTA_* is never inherited: the start counter is in env
                name: {**template, "env": {"SIESTA_TEST_STARTS": str(self.folder / "starts.txt")}}
                for name, template in {
                    "web": _tiny(),
                    "slow": _tiny(1.0),
                    "idle": _tiny(idle_timeout="1s"),
                    "idle5": _tiny(idle_timeout="5s"),
                    "ten": _tiny(idle_timeout="10s"),
                }.items()
            },
            "sessions": self.sessions,
        }

    def start(self, name: str) -> Replica:
        port, admin, keda = free_port(), free_port(), free_port()
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.config(port, admin, keda)))
        log = self.folder / f"{name}.log"
        env = {**os.environ, "SIESTA_TEST_STARTS": str(self.folder / "starts.txt")}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "siesta", "up", "-c", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
            )
        replica = Replica(name, proc, port, admin, keda, log)
        self.replicas.append(replica)
        self.all.append(replica)
        wait_for(lambda: proc.poll() is not None or accepts(port), 30, f"{name} to listen")
        assert proc.poll() is None, replica.output()
        return replica

    def kill(self, replica: Replica) -> None:
        replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait(10)
        self.replicas.remove(replica)

    def starts(self) -> list[int]:
        """The pids of every backend start, in order (tests/backend.py writes them)."""
        path = self.folder / "starts.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        return [int(line.split()[0]) for line in lines]

    def stop(self) -> None:
        """SIGTERM to all at once; every replica exits."""
        for replica in self.replicas:
            replica.proc.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            assert replica.proc.wait(60) == 0, replica.output()
        self.replicas = []


def _alive_backends(cluster: Cluster) -> list[int]:
    return sorted(running_backends(cluster.folder / "starts.txt"))


@contextlib.contextmanager
def _cluster(
    folder: Path, sessions: dict[str, Any], names: int = 3, lease: str = LEASE
) -> Iterator[Cluster]:
    with running_redis(folder / "redis") as redis:
        cluster = Cluster(folder, redis, sessions, lease)
        try:
            for n in range(names):
                cluster.start(f"r{n}")
            yield cluster
        finally:
            for replica in cluster.replicas:
                replica.proc.send_signal(signal.SIGTERM)
            for replica in cluster.all:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    replica.proc.wait(60)
                if replica.proc.poll() is None:
                    replica.proc.kill()
            # never leave a backend behind (and never kill another test's: pids wrap)
            kill_groups(list(running_backends(folder / "starts.txt").values()))


async def _get_all(urls: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
    timeout = httpx.Timeout(150, pool=None)  # each request waits its turn, however many
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        return list(await asyncio.gather(*(client.get(url) for url in urls)))


STORM = 300
SESSIONS = {
    "solo": {"template": "slow"},
    "keda": {"template": "web"},
    "sleepy": {"template": "idle5"},
    "busy": {"template": "ten"},
    **{f"s{n:03d}": {"template": "web"} for n in range(STORM)},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas on one Redis, shared by the tests below that kill nothing."""
    with _cluster(tmp_path_factory.mktemp("replicas"), SESSIONS) as running:
        yield running


def test_200_requests_over_three_replicas_start_one_backend(cluster: Cluster) -> None:
    """200 concurrent requests to one sleeping session, spread over three replicas:
    one backend starts (the wake lease), all 200 are answered by it."""
    before = len(cluster.starts())
    urls = [cluster.replicas[n % 3].url("solo") for n in range(200)]
    responses = asyncio.run(_get_all(urls))
    assert [r.status_code for r in responses] == [200] * 200
    assert len({r.text for r in responses}) == 1  # one backend pid answered them all
    assert len(cluster.starts()) == before + 1


def test_a_storm_of_300_sessions_over_three_replicas(cluster: Cluster) -> None:
    """300 sleeping sessions, each asked through two replicas at once: 0 errors, and one
    backend per session."""
    before = len(_alive_backends(cluster))
    replicas = cluster.replicas
    urls = [replicas[(n + k) % 3].url(f"s{n:03d}") for n in range(STORM) for k in (0, 1)]
    responses = asyncio.run(_get_all(urls))
    assert [r.status_code for r in responses if r.status_code != 200] == []
    by_session: dict[str, set[str]] = {}
    for response in responses:
        by_session.setdefault(response.text.split(" pid ")[0], set()).add(response.text)
    assert all(len(pids) == 1 for pids in by_session.values())
    assert len(by_session) == STORM
    assert len(_alive_backends(cluster)) == before + STORM  # never two for one session


def test_a_keda_stream_on_one_replica_gets_a_wake_made_on_another(cluster: Cluster) -> None:
    """A real gRPC client holds StreamIsActive open on replica r1; a request wakes the
    session through replica r0: the stream on r1 says `true`, and IsActive on r2 too."""
    r0, r1, r2 = cluster.replicas[:3]
    ref = pb.ScaledObjectRef(name="nb-keda", namespace="test", scalerMetadata={"session": "keda"})

    async def run() -> tuple[bool, bool]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{r1.keda}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            stream = stub.StreamIsActive(ref)
            first = asyncio.ensure_future(stream.read())
            await asyncio.sleep(0.3)  # the stream is open on r1 before the wake
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.get(r0.url("keda"))
            assert answer.status_code == 200
            pushed = await asyncio.wait_for(first, 10)
            stream.cancel()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{r2.keda}") as channel:
            active = await pb_grpc.ExternalScalerStub(channel).IsActive(ref)
        return bool(pushed.result), bool(active.result)

    assert asyncio.run(run()) == (True, True)


def test_sleeps_are_decided_once_for_all_replicas(cluster: Cluster) -> None:
    """A session (idle_timeout 5s: the second request must come before it sleeps, on a
    loaded CI machine too) woken through one replica and used through another is put to
    sleep by the controller's replica once: one stop, and every replica then holds
    requests for it again (it wakes again)."""
    r0, r1 = cluster.replicas[:2]
    assert httpx.get(r0.url("sleepy"), timeout=30).status_code == 200
    first = cluster.starts()[-1]
    assert httpx.get(r1.url("sleepy"), timeout=30).headers["x-siesta-wake"] == "warm"
    wait_for(
        lambda: first not in _alive_backends(cluster), 40, "the idle session's backend to stop"
    )
    again = httpx.get(r1.url("sleepy"), timeout=30)
    assert (again.status_code, again.headers["x-siesta-wake"]) == (200, "cold")


def test_activity_on_any_replica_keeps_a_session_awake(cluster: Cluster) -> None:
    """A session (idle_timeout 10s) woken through the controller's replica and then used
    only through another one, twice a second for 15s: the controller sees that traffic
    (exchanged through Redis at most a second apart) and keeps it awake, every answer
    warm from one backend; once the traffic stops, it is put to sleep."""
    leader = next(r for r in cluster.replicas if _leads(r))
    other = next(r for r in cluster.replicas if r is not leader)
    assert httpx.get(leader.url("busy"), timeout=30).status_code == 200
    backend = cluster.starts()[-1]
    with httpx.Client(timeout=30) as client:
        for _ in range(30):
            answer = client.get(other.url("busy"))
            assert (answer.status_code, answer.headers["x-siesta-wake"]) == (200, "warm")
            assert answer.text.endswith(f"pid {backend}\n")
            time.sleep(0.5)
    wait_for(
        lambda: backend not in _alive_backends(cluster), 60, "the sleep once the traffic stopped"
    )


def _leads(replica: Replica) -> bool:
    """Whether `replica` runs the controller now (the last word of its log on it)."""
    said = [line for line in replica.output().splitlines() if "runs the controller" in line]
    return bool(said) and "now runs the controller" in said[-1]


def test_the_replicas_report_their_coordination(cluster: Cluster) -> None:
    """/healthz names the replicas' coordination and the store, both ok."""
    health = cluster.replicas[0].health()
    assert health["dependencies"]["replicas"]["mode"] == "ok"
    assert health["dependencies"]["store"]["mode"] == "ok"


def test_killing_the_waking_replica_mid_storm(tmp_path: Path) -> None:
    """kill -9 of the replica that is waking sessions (slow starts) while the others hold
    requests for them: the others take the wakes over once the leases expire, adopt
    the backends it had started, and answer every request; no duplicate backend, and
    nothing left running after a clean shutdown of the rest."""
    sessions = {f"k{n}": {"template": "slow"} for n in range(20)}
    with _cluster(tmp_path, sessions, lease="3s") as cluster:
        r0, r1, r2 = cluster.replicas

        async def run() -> list[httpx.Response]:
            first = [asyncio.ensure_future(_get_all([r0.url(s) for s in sessions]))]
            await asyncio.sleep(0.5)  # r0 holds the leases and starts the backends
            others = _get_all([r.url(s) for s in sessions for r in (r1, r2)])
            waiting = asyncio.ensure_future(others)
            await asyncio.sleep(0.2)
            cluster.kill(r0)
            for task in first:
                task.cancel()
            return await waiting

        responses = asyncio.run(run())
        assert [r.status_code for r in responses] == [200] * len(responses)
        per_session: dict[str, set[str]] = {}
        for response in responses:
            per_session.setdefault(response.text.split(" pid ")[0], set()).add(response.text)
        assert all(len(pids) == 1 for pids in per_session.values())
        alive = _alive_backends(cluster)
        assert len(alive) == len(sessions)  # the ones r0 started were adopted, not doubled
        cluster.stop()
        wait_for(lambda: not _alive_backends(cluster), 20, "every backend to stop")


def test_the_controller_moves_when_its_replica_dies(tmp_path: Path) -> None:
    """kill -9 of the replica holding the controller lease: another takes it over within
    the lease's ttl and puts an idle session to sleep."""
    with _cluster(tmp_path, {"idle1": {"template": "idle"}}, names=2, lease="3s") as cluster:
        leader = next(r for r in cluster.replicas if "now runs the controller" in r.output())
        other = next(r for r in cluster.replicas if r is not leader)
        cluster.kill(leader)
        assert httpx.get(other.url("idle1"), timeout=30).status_code == 200
        backend = cluster.starts()[-1]
        wait_for(
            lambda: backend not in _alive_backends(cluster), 20, "the sleep by the new controller"
        )
        assert "now runs the controller" in other.output()
        cluster.stop()


def test_redis_killed_and_restarted_empty(tmp_path: Path) -> None:
    """Redis is killed: an awake session keeps serving through every replica, a sleeping
    one is refused at once with 503 + Retry-After (a wake is not safe without the
    lease), /healthz says degraded. Redis comes back empty: the replicas write again
    what runs, and the awake session is neither restarted nor doubled."""
    sessions = {"up": {"template": "web"}, "down": {"template": "web"}}
    with _cluster(tmp_path, sessions, names=2) as cluster:
        r0, r1 = cluster.replicas
        assert httpx.get(r0.url("up"), timeout=30).status_code == 200
        backend = cluster.starts()[-1]
        cluster.redis.kill()
        for replica in (r0, r1):
            assert httpx.get(replica.url("up"), timeout=30).status_code == 200
        refused = httpx.get(r1.url("down"), timeout=30)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        wait_for(
            lambda: r0.health()["dependencies"]["replicas"]["mode"] == "degraded",
            20,
            "the replicas to be degraded",
        )
        cluster.redis.start()
        wait_for(lambda: r0.health()["status"] == "ok", 30, "the replicas to be ok again")
        wait_for(
            lambda: r0.health()["dependencies"]["store"]["lost"] >= 1, 30, "the loss to be seen"
        )
        again = httpx.get(r1.url("up"), timeout=30)
        assert (again.status_code, again.text.endswith(f"pid {backend}\n")) == (200, True)
        assert httpx.get(r0.url("down"), timeout=30).status_code == 200
        assert len(_alive_backends(cluster)) == 2
        cluster.stop()
        wait_for(lambda: not _alive_backends(cluster), 20, "every backend to stop")
        assert all(r.proc.returncode == 0 for r in cluster.all)


def test_a_port_handed_to_a_backend_is_claimed_machine_wide() -> None:
    """Replicas on one machine pick their backends' ports independently: a port claimed by
    one process (a real other process here) is not handed out by another until that one
    dies (kill -9), and 300 claims held at once are 300 ports. (Before the claim, a storm
    over three replicas gave two sessions one port: one backend could not bind, and the
    other session's backend answered the first one's readiness probe.)"""
    held = [claim_port("127.0.0.1") for _ in range(300)]
    try:
        assert len({c.port for c in held}) == 300
        assert all(c.lock is not None for c in held)
        assert lock_port("127.0.0.1", held[0].port) is None  # held here: taken
    finally:
        for claim in held:
            claim.release()
    port = free_port()
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from siesta.providers.local import lock_port; "
            f"lock = lock_port('127.0.0.1', {port}); print(lock is not None, flush=True); "
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"True"
        assert lock_port("127.0.0.1", port) is None
    finally:
        holder.kill()
        holder.wait(10)
    again = lock_port("127.0.0.1", port)
    assert again is not None  # the kernel let go of it with its process
    again.close()
