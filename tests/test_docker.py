"""The docker provider through a real siesta process and a real dockerd.

Containers run the busybox test image (tests/dockerd.py); the tests reach them only
through siesta's gateway and the ports Docker publishes on 127.0.0.1, and check what
Docker holds through the Engine API.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from siesta.config import load_config
from siesta.core.model import State

from .admin import client, launch_admin
from .conftest import Launcher, SiestaProcess, wait_for
from .dockerd import TEST_IMAGE, Engine


def container_template(**extra: Any) -> dict[str, Any]:
    """A docker template of the busybox test image; ready by HTTP GET / (the default)."""
    template: dict[str, Any] = {
        "provider": "docker",
        "image": TEST_IMAGE,
        "port": 8080,
        "stop_grace": "2s",
        "idle_timeout": "1h",
    }
    template.update(extra)
    return template


def instance_of(proc: SiestaProcess) -> str:
    return load_config(proc.config).instance_id


@pytest.fixture
def docker(docker_engine: Engine) -> Iterator[Callable[[SiestaProcess], str]]:
    """Register a siesta process's instance: at teardown the process is stopped, then its
    containers and volumes are removed."""
    tracked: list[SiestaProcess] = []

    def track(proc: SiestaProcess) -> str:
        tracked.append(proc)
        return instance_of(proc)

    yield track
    for proc in tracked:
        proc.stop()
        docker_engine.cleanup(instance_of(proc))


def only_container(engine: Engine, instance: str, session: str = "alice") -> dict[str, Any]:
    found = [c for c in engine.containers(instance) if c["Labels"]["siesta.session"] == session]
    assert len(found) == 1, found
    return found[0]


def test_wake_sleep_and_wake_again_keep_the_container_and_its_data(
    siesta: Launcher,
    monkeypatch: pytest.MonkeyPatch,
    docker_engine: Engine,
    docker: Callable[[SiestaProcess], str],
) -> None:
    """A request wakes alice in a labelled container published on 127.0.0.1; a sleep stops
    it (kept, on_sleep: stop); the next request starts the same container again, whose
    named volume (one per session) still holds what the first run wrote."""
    volume = f"siesta-test-{uuid.uuid4().hex[:8]}-{{session}}:/data"
    proc, admin = launch_admin(
        siesta, monkeypatch, templates={"box": container_template(volumes=[volume])},
        sessions={"alice": {"template": "box"}},
    )  # fmt: skip
    instance = docker(proc)

    first = httpx.get(proc.url("alice"), timeout=30)
    assert first.status_code == 200
    assert first.headers["x-siesta-wake"] == "cold"
    container = only_container(docker_engine, instance)
    assert first.text.split() == ["alice", container["Id"][:12]]
    assert container["Labels"]["siesta.instance"] == instance
    assert container["State"] == "running"
    assert [p["IP"] for p in container["Ports"]] == ["127.0.0.1"]
    mount = docker_engine.inspect(container["Id"])["Mounts"][0]
    assert mount["Name"] == volume.split(":")[0].replace("{session}", "alice")

    with client(admin) as api:
        assert api.post("/api/sessions/alice/sleep").json()["state"] == "ASLEEP"
    assert only_container(docker_engine, instance)["State"] == "exited"

    again = httpx.get(proc.url("alice", "/runs"), timeout=30)
    assert again.headers["x-siesta-wake"] == "cold"
    assert again.text.split() == ["alice", "alice"]  # two runs, one volume
    assert only_container(docker_engine, instance)["Id"] == container["Id"]


def test_on_sleep_remove_deletes_the_container_but_keeps_the_volume(
    siesta: Launcher,
    monkeypatch: pytest.MonkeyPatch,
    docker_engine: Engine,
    docker: Callable[[SiestaProcess], str],
) -> None:
    """With on_sleep: remove, a sleep deletes the container; the next wake makes a new one
    from the image, and the session's named volume carries the data over."""
    volume = f"siesta-test-{uuid.uuid4().hex[:8]}-{{session}}:/data"
    template = container_template(volumes=[volume], on_sleep="remove")
    proc, admin = launch_admin(
        siesta, monkeypatch, templates={"box": template}, sessions={"alice": {"template": "box"}}
    )
    instance = docker(proc)
    assert httpx.get(proc.url("alice"), timeout=30).status_code == 200
    first = only_container(docker_engine, instance)["Id"]

    with client(admin) as api:
        api.post("/api/sessions/alice/sleep")
        assert docker_engine.containers(instance) == []
        logs = api.get("/api/sessions/alice/logs").json()
    assert "serving alice on port 8080" in logs["log"]  # kept from the removed container

    again = httpx.get(proc.url("alice", "/runs"), timeout=30)
    assert again.text.split() == ["alice", "alice"]
    assert only_container(docker_engine, instance)["Id"] != first


def test_fifty_concurrent_requests_start_one_container(
    siesta: Launcher, docker_engine: Engine, docker: Callable[[SiestaProcess], str]
) -> None:
    """50 requests at once to a sleeping container session: one container, started once
    (its /data/runs has one line), and all 50 are served."""
    proc = siesta(templates={"box": container_template()}, sessions={"alice": {"template": "box"}})
    instance = docker(proc)

    def get(_: int) -> httpx.Response:
        return httpx.get(proc.url("alice", "/runs"), timeout=60)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(get, range(50)))
    assert [a.status_code for a in answers] == [200] * 50
    assert {a.text for a in answers} == {"alice\n"}
    assert len(docker_engine.containers(instance)) == 1


def test_restart_adopts_running_containers_and_removes_orphans(
    siesta: Launcher, docker_engine: Engine, docker: Callable[[SiestaProcess], str]
) -> None:
    """siesta killed with SIGKILL leaves alice's container running; the next siesta adopts
    it (AWAKE, served warm by the same container, no second start). At the same start-up it
    removes a container of its instance whose session does not exist, stops one that runs
    while its session (bob) sleeps, and leaves another instance's container alone."""
    sessions = {"alice": {"template": "box"}, "bob": {"template": "box"}}
    first = siesta(templates={"box": container_template()}, sessions=sessions)
    instance = docker(first)
    assert httpx.get(first.url("alice"), timeout=30).status_code == 200
    alice = only_container(docker_engine, instance)
    first.stop(signal.SIGKILL)
    assert docker_engine.inspect(alice["Id"])["State"]["Running"]

    labels = {"siesta.instance": instance, "siesta.template": "box"}
    body = {"Image": TEST_IMAGE, "Env": ["SIESTA_SESSION=x"]}
    ghost = docker_engine.create(
        f"{instance}.ghost", {**body, "Labels": {**labels, "siesta.session": "ghost"}}
    )
    bob = docker_engine.create(
        f"{instance}.bob", {**body, "Labels": {**labels, "siesta.session": "bob"}}
    )
    docker_engine.post(f"/containers/{bob}/start")
    stranger_labels = {**labels, "siesta.instance": "another", "siesta.session": "ghost"}
    stranger = docker_engine.create(
        f"another-{uuid.uuid4().hex[:8]}", {**body, "Labels": stranger_labels}
    )
    try:
        second = siesta(port=first.port, templates={"box": container_template()}, sessions=sessions)
        assert second.state("alice") is State.AWAKE
        answer = httpx.get(second.url("alice", "/runs"), timeout=30)
        assert answer.headers["x-siesta-wake"] == "warm"
        assert answer.text == "alice\n"  # started once, by the first siesta
        ids = {c["Id"] for c in docker_engine.containers(instance)}
        assert ids == {alice["Id"], bob}
        assert docker_engine.http.get(f"/containers/{ghost}/json").status_code == 404
        assert not docker_engine.inspect(bob)["State"]["Running"]
        assert docker_engine.inspect(stranger)["Id"] == stranger
    finally:
        docker_engine.remove(stranger)


def test_a_container_killed_from_outside_is_noticed_at_once(
    siesta: Launcher, docker_engine: Engine, docker: Callable[[SiestaProcess], str]
) -> None:
    """`docker kill` of an awake session's container: Docker's event stream tells siesta,
    which records the session asleep with the exit code; the next request wakes it."""
    proc = siesta(templates={"box": container_template()}, sessions={"alice": {"template": "box"}})
    instance = docker(proc)
    assert httpx.get(proc.url("alice"), timeout=30).status_code == 200
    container = only_container(docker_engine, instance)["Id"]

    docker_engine.post(f"/containers/{container}/kill")
    wait_for(lambda: proc.state("alice") is State.ASLEEP, 10, "alice to be noticed asleep")
    assert proc.events("alice")[-1].reason == "container exited with code 137"

    again = httpx.get(proc.url("alice", "/runs"), timeout=30)
    assert again.headers["x-siesta-wake"] == "cold"
    assert again.text.split() == ["alice", "alice"]


def test_a_missing_image_gives_503_and_failed_with_backoff(
    siesta: Launcher, docker: Callable[[SiestaProcess], str]
) -> None:
    """An image the Docker host does not have: the request gets 503 with Retry-After and
    the event says why; the session is FAILED and refuses wakes during its backoff (no
    retry)."""
    template = container_template(
        image="siesta-test-missing:1", max_start_failures=1, failure_backoff="1m"
    )
    proc = siesta(templates={"box": template}, sessions={"alice": {"template": "box"}})
    docker(proc)

    answer = httpx.get(proc.url("alice"), timeout=30)
    assert answer.status_code == 503
    assert "could not be woken" in answer.text  # the detail goes to the log and the event
    assert proc.state("alice") is State.FAILED
    assert "image 'siesta-test-missing:1' is not on the Docker host" in proc.events()[-1].reason
    again = httpx.get(proc.url("alice"), timeout=30)
    assert again.status_code == 503
    assert 1 < int(again.headers["retry-after"]) <= 60
    failures = [e for e in proc.events("alice") if e.reason.startswith("start failed")]
    assert len(failures) == 1


def test_a_container_that_exits_at_once_gives_503_and_failed(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, docker: Callable[[SiestaProcess], str]
) -> None:
    """A container whose command fails straight away: 503, FAILED, and its log (the
    command's output) is there for `siesta logs`."""
    template = container_template(
        command=["sh", "-c", "echo cannot start; exit 3"], max_start_failures=1
    )
    proc, admin = launch_admin(
        siesta, monkeypatch, templates={"box": template}, sessions={"alice": {"template": "box"}}
    )
    docker(proc)
    answer = httpx.get(proc.url("alice"), timeout=30)
    assert answer.status_code == 503
    assert proc.state("alice") is State.FAILED
    assert "exited" in proc.events("alice")[-1].reason
    with client(admin) as api:
        assert "cannot start" in api.get("/api/sessions/alice/logs").json()["log"]
