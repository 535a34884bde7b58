"""dockerd itself failing under a running siesta: killed, stopped, restarted.

These tests run their own dockerd (tests/dockerd.py `PrivateDockerd`), reached over tcp
with TLS (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), so restarting it touches no
other test's daemon.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator

import httpx
import pytest
import yaml

from siesta.core.model import State
from siesta.providers.docker import API_TIMEOUT, STATS_AT_ONCE, DockerProvider

from .conftest import Launcher, SiestaProcess, free_port, wait_for
from .dockerd import PrivateDockerd, build_test_image
from .test_docker import container_template, instance_of, only_container
from .test_docker_provider import templates


def docker_mode(proc: SiestaProcess) -> str:
    """The mode of dependency "docker" in siesta's /healthz."""
    admin = yaml.safe_load(proc.config.read_text())["gateway"]["admin_listen"]
    health = httpx.get(f"http://{admin}/healthz", timeout=10).json()
    return str(health["dependencies"]["docker"]["mode"])


@pytest.fixture(scope="module")
def private_dockerd() -> Iterator[PrivateDockerd]:
    daemon = PrivateDockerd(free_port())
    try:
        daemon.start()
        build_test_image(daemon.engine)
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def daemon(private_dockerd: PrivateDockerd, monkeypatch: pytest.MonkeyPatch) -> PrivateDockerd:
    """The private daemon, running, and siesta pointed at it over tcp with TLS."""
    if private_dockerd.proc is None:
        private_dockerd.start()
    for key, value in private_dockerd.env.items():
        monkeypatch.setenv(key, value)
    return private_dockerd


def test_dockerd_killed_and_restarted_strands_nothing(
    siesta: Launcher, daemon: PrivateDockerd
) -> None:
    """dockerd killed with SIGKILL under an awake session: requests meanwhile are answered
    (not held); once dockerd is back (and has killed the container it left) the event
    stream reconnects and siesta records the session asleep; the next request wakes the
    same container; and a later `docker kill` is seen through the new stream."""
    proc = siesta(templates={"box": container_template()}, sessions={"alice": {"template": "box"}})
    instance = instance_of(proc)
    assert httpx.get(proc.url("alice"), timeout=30).status_code == 200  # over tcp + TLS
    container = only_container(daemon.engine, instance)["Id"]

    daemon.stop(signal.SIGKILL)
    down = httpx.get(proc.url("alice"), timeout=30)
    assert down.status_code in (502, 503), down.text

    daemon.start()
    wait_for(lambda: proc.state("alice") is State.ASLEEP, 15, "alice to be recorded asleep")
    back = httpx.get(proc.url("alice", "/runs"), timeout=30)
    assert back.status_code == 200
    assert back.text.split() == ["alice", "alice"]
    assert only_container(daemon.engine, instance)["Id"] == container

    daemon.engine.post(f"/containers/{container}/kill")
    wait_for(lambda: proc.state("alice") is State.ASLEEP, 10, "the kill to be noticed")
    daemon.engine.cleanup(instance)


def test_a_wake_while_dockerd_is_down_gets_a_prompt_503(
    siesta: Launcher, daemon: PrivateDockerd
) -> None:
    """dockerd stopped: /healthz says docker is degraded; a request for a sleeping
    container session gets 503 (the event says Docker cannot be reached), and the session
    is not left WAKING; once dockerd is back, docker is ok again and the next request is
    served."""
    proc = siesta(templates={"box": container_template()}, sessions={"alice": {"template": "box"}})
    instance = instance_of(proc)
    assert docker_mode(proc) == "ok"
    daemon.stop()
    try:
        wait_for(lambda: docker_mode(proc) == "degraded", 15, "docker degraded in /healthz")
        answer = httpx.get(proc.url("alice"), timeout=30)
        assert answer.status_code == 503
        assert "cannot reach the Docker daemon" in proc.events("alice")[-1].reason
        assert proc.state("alice") is State.ASLEEP  # one failure of three: it may retry
    finally:
        daemon.start()
    wait_for(lambda: docker_mode(proc) == "ok", 15, "docker ok again in /healthz")
    assert httpx.get(proc.url("alice"), timeout=30).status_code == 200
    daemon.engine.cleanup(instance)


async def test_stats_asked_while_dockerd_is_down_are_missed_not_held(
    daemon: PrivateDockerd,
) -> None:
    """dockerd killed under an awake container: more stats requests than there are stats
    slots each answer "no usage" (none is held, no slot is kept by a failure); once
    dockerd is back, the provider's stats work again for a new container."""
    instance = f"test-{uuid.uuid4().hex[:10]}"
    provider = DockerProvider(templates(), instance=instance)
    try:
        await provider.start("alice", "box")
        assert await provider.usage("alice") is not None
        daemon.stop(signal.SIGKILL)
        try:
            asks = (provider.usage("alice") for _ in range(3 * STATS_AT_ONCE))
            missed = await asyncio.wait_for(asyncio.gather(*asks), API_TIMEOUT)  # no hang
        finally:
            daemon.start()
        assert missed == [None] * (3 * STATS_AT_ONCE)
        await provider.start("bob", "box")
        assert await provider.usage("bob") is not None
    finally:
        await provider.close()
        daemon.engine.cleanup(instance)
