"""The docker provider on its own, in this test's event loop, against a real dockerd.

What the process-level tests (test_docker.py) cannot see easily: the container Docker
made from each template key, the address on a user network, usage from Docker's stats,
a template change replacing the container, the sweep after a session is deleted, and a
daemon that cannot be reached.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from siesta.config import TemplateConf, parse_config
from siesta.core.container import container_name
from siesta.providers.base import StartError
from siesta.providers.docker import DockerProvider

from .dockerd import TEST_IMAGE, Engine


def templates(**box: Any) -> dict[str, TemplateConf]:
    """A config's templates: `box` is a docker template of the test image."""
    spec = {"provider": "docker", "image": TEST_IMAGE, "port": 8080, **box}
    text = yaml.safe_dump({"templates": {"box": spec}})
    return dict(parse_config(text, base_dir=Path.cwd()).templates)


@pytest.fixture
def instance(docker_engine: Engine) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    docker_engine.cleanup(name)


async def test_every_template_key_reaches_the_container(
    docker_engine: Engine, instance: str
) -> None:
    """image, command, env (with placeholders), volumes, cpus, memory, labels, user,
    read_only, cap_drop and security_opt are what Docker holds for the container; the
    port is published on 127.0.0.1 only; siesta's labels are there."""
    volume = f"siesta-test-{uuid.uuid4().hex[:8]}-{{session}}"
    box = templates(
        command=["/bin/serve"],
        env={"GREETING": "hi {session} on {port}"},
        volumes=[f"{volume}:/data", "/tmp:/host-tmp:ro"],
        cpus=0.5,
        memory="64m",
        labels={"team": "blue"},
        user="1000:1000",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    provider = DockerProvider(box, instance=instance)
    try:
        backend = await provider.start("alice", "box")
        info = docker_engine.inspect(f"{instance}.alice")
    finally:
        await provider.stop("alice", 0)
        await provider.close()
    assert backend.endpoint.host == "127.0.0.1"
    config, host = info["Config"], info["HostConfig"]
    assert config["Image"] == TEST_IMAGE
    assert config["Cmd"] == ["/bin/serve"]
    assert "GREETING=hi alice on 8080" in config["Env"]
    assert {"PORT=8080", "SIESTA_SESSION=alice", "SIESTA_BASE_URL=/s/alice/"} <= set(config["Env"])
    assert config["User"] == "1000:1000"
    assert config["Labels"]["team"] == "blue"
    assert config["Labels"]["siesta.session"] == "alice"
    assert config["Labels"]["siesta.instance"] == instance
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["RestartPolicy"]["Name"] == "no"
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/data"]["Name"] == volume.replace("{session}", "alice")
    assert mounts["/host-tmp"]["Source"] == "/tmp"
    assert mounts["/host-tmp"]["RW"] is False
    docker_engine.remove_volume(volume.replace("{session}", "alice"))


async def test_with_a_network_the_address_is_the_containers_on_it(
    docker_engine: Engine, instance: str
) -> None:
    """With `network`, nothing is published and the endpoint is the container's address on
    that network (read from Docker; no traffic is sent to it here)."""
    network = f"siesta-test-{uuid.uuid4().hex[:8]}"
    answer = docker_engine.http.post("/networks/create", json={"Name": network})
    assert answer.status_code == 201, answer.text
    provider = DockerProvider(templates(network=network, ready={"tcp": True}), instance=instance)
    try:
        backend = await provider.start("alice", "box")
        info = docker_engine.inspect(f"{instance}.alice")
        await provider.stop("alice", 0)
    finally:
        await provider.close()
        docker_engine.cleanup(instance)
        docker_engine.http.delete(f"/networks/{network}")
    address = info["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert (backend.endpoint.host, backend.endpoint.port) == (address, 8080)
    assert info["HostConfig"]["PortBindings"] in (None, {})


async def test_usage_comes_from_dockers_stats(docker_engine: Engine, instance: str) -> None:
    """A running container's usage: CPU seconds that only grow, memory above zero; once
    stopped, none. status() says running, with its memory."""
    provider = DockerProvider(templates(), instance=instance)
    try:
        await provider.start("alice", "box")
        first = await provider.usage("alice")
        second = await provider.usage("alice")
        status = await provider.status("alice")
        await provider.stop("alice", 0)
        after = await provider.usage("alice")
    finally:
        await provider.close()
    assert first is not None
    assert second is not None
    assert first.cpu_seconds > 0
    assert second.cpu_seconds >= first.cpu_seconds
    assert first.memory_bytes > 0
    assert status.running
    assert status.memory_bytes > 0
    assert after is None
    assert provider.measures("box")


async def test_a_changed_template_replaces_the_container(
    docker_engine: Engine, instance: str
) -> None:
    """The container is started again while its template is unchanged; once the template
    changes (here its env), the next wake replaces it with one of the new spec."""
    first = DockerProvider(templates(env={"V": "1"}), instance=instance)
    try:
        await first.start("alice", "box")
        one = docker_engine.inspect(f"{instance}.alice")["Id"]
        await first.stop("alice", 0)
        await first.start("alice", "box")
        assert docker_engine.inspect(f"{instance}.alice")["Id"] == one
        await first.stop("alice", 0)
    finally:
        await first.close()
    second = DockerProvider(templates(env={"V": "2"}), instance=instance)
    try:
        await second.start("alice", "box")
        info = docker_engine.inspect(f"{instance}.alice")
        await second.stop("alice", 0)
    finally:
        await second.close()
    assert info["Id"] != one
    assert "V=2" in info["Config"]["Env"]


async def test_the_sweep_removes_the_container_of_a_deleted_session(
    docker_engine: Engine, instance: str
) -> None:
    """A sleeping session's container is kept while the session exists; once it is gone,
    the next sweep removes the container (a named volume would stay)."""
    sessions: dict[str, object] = {"alice": "ASLEEP", "bob": "ASLEEP"}
    provider = DockerProvider(templates(), instance=instance, known=lambda: sessions)
    try:
        await provider.start("alice", "box")
        await provider.stop("alice", 0)
        await provider.sweep()
        assert len(docker_engine.containers(instance)) == 1
        del sessions["alice"]
        await provider.sweep()
        assert docker_engine.containers(instance) == []
    finally:
        await provider.close()


async def test_an_unreachable_daemon_fails_fast_and_clearly(tmp_path: Path) -> None:
    """DOCKER_HOST naming a socket nobody serves: start-up goes on (begin says False),
    adoption finds nothing, and a wake fails at once with a StartError saying so."""
    url = f"unix://{tmp_path / 'nobody.sock'}"
    provider = DockerProvider(templates(), instance="test-unreachable", url=url)
    try:
        assert await provider.begin() is False
        assert await provider.adopt([]) == []
        with pytest.raises(StartError, match="cannot reach the Docker daemon"):
            await provider.start("alice", "box")
        assert not provider.alive("alice")
    finally:
        await provider.close()


async def test_rounds_of_stats_leave_room_for_stops_and_starts(
    docker_engine: Engine, instance: str
) -> None:
    """Eight containers awake and their stats asked for ten times over, all at once (the
    resource sampler's round, larger), while one container is stopped and another
    session started: the stop and the start succeed and every stats request answers.
    With 100 containers awake, streamed stats once held every connection to dockerd and
    the stops queued behind them failed after a minute (bench/docker.py)."""
    provider = DockerProvider(templates(), instance=instance)
    sessions = [f"s{i}" for i in range(8)]
    try:
        await asyncio.gather(*(provider.start(sid, "box") for sid in sessions))
        rounds = [provider.usage(sid) for _ in range(10) for sid in sessions]
        *usages, _, started = await asyncio.gather(
            *rounds, provider.stop("s0", 0), provider.start("late", "box")
        )
        info = docker_engine.inspect(container_name(instance, "s0"))
        late = await provider.usage("late")
    finally:
        await provider.close()
    answered = [u for u in usages if u is not None]
    assert len(answered) >= len(usages) - 10  # s0's: none once it is stopped
    assert all(u.memory_bytes > 0 for u in answered)
    assert info["State"]["Running"] is False
    assert started.endpoint.port > 0
    assert late is not None
