"""`provider: docker` in the config, and the pure reading of Docker's answers
(siesta.core.container): defaults, parsing, and one-line errors with file:line key."""

from __future__ import annotations

from pathlib import Path

import pytest

from siesta.config import load_config
from siesta.core.container import (
    ContainerSpec,
    Volume,
    create_body,
    endpoint_of,
    exit_reason,
    parse_memory,
    parse_volume,
    usage_of,
)
from siesta.core.model import Endpoint

from .test_config import problems, write


def test_a_docker_template_loads_with_its_defaults(tmp_path: Path) -> None:
    """image and port are all a docker template needs: ready is HTTP GET / (not tcp),
    on_sleep is stop, no limits, nothing read-only."""
    config = load_config(
        write(
            tmp_path,
            """\
            templates:
              lab: {provider: docker, image: "lab:1", port: 8888, memory: 1.5g, cpus: 2}
            """,
        )
    )
    lab = config.templates["lab"]
    assert (lab.image, lab.port, lab.on_sleep) == ("lab:1", 8888, "stop")
    assert (lab.ready.http, lab.ready.tcp) == ("/", False)
    assert lab.memory == 1536 * 1024 * 1024
    assert lab.cpus == 2.0
    assert (lab.read_only, lab.cap_drop, lab.volumes, lab.network) == (False, [], [], None)


def test_docker_keys_are_checked_with_file_line_and_key(tmp_path: Path) -> None:
    """Bad docker keys are refused, each on its line: a volume without a target, a memory
    under Docker's minimum, a reserved label, a user with spaces, a bad on_sleep."""
    found = problems(
        tmp_path,
        """\
        templates:
          lab:
            provider: docker
            image: lab
            port: 8888
            volumes: ["data-{session}"]
            memory: 1k
            labels: {siesta.session: x}
            user: "a b"
            on_sleep: pause
        """,
    )
    assert found == [
        "6 templates.lab.volumes[0]: 'data-{session}' is not source:target[:ro]: write e.g. "
        "'notes-{session}:/home/me/work' or '/srv/shared:/data:ro'",
        "7 templates.lab.memory: must be at least 6m (Docker's smallest memory limit)",
        "8 templates.lab.labels: siesta.session: keys starting with siesta. are siesta's",
        "9 templates.lab.user: must be a user, or user:group, as a name or number, e.g. 1000:1000",
        "10 templates.lab.on_sleep: must be 'stop' or 'remove'",
    ]


def test_docker_templates_need_image_and_port_and_refuse_local_keys(tmp_path: Path) -> None:
    """A docker template without image and port, or with cwd, or ready by tcp through the
    published port, is refused; docker keys on a local template are refused too."""
    found = problems(
        tmp_path,
        """\
        templates:
          lab:
            provider: docker
            cwd: app
            ready: {tcp: true}
          web:
            command: [run]
            image: lab
            memory: 64m
        """,
    )
    assert found == [
        "2 templates.lab.image: is required by provider docker",
        "2 templates.lab.port: is required by provider docker",
        "4 templates.lab.cwd: not used by provider docker: the image's WORKDIR applies",
        "5 templates.lab.ready.tcp: tcp cannot tell when a container is ready: Docker's port "
        "proxy accepts connections before the app listens. Use http (a path, e.g. /), or set "
        "network",
        "8 templates.web.image: only for provider docker",
        "9 templates.web.memory: only for provider docker",
    ]


@pytest.mark.parametrize(
    ("text", "volume"),
    [
        ("notes-{session}:/home/me", Volume("notes-{session}", "/home/me")),
        ("/srv/shared:/data:ro", Volume("/srv/shared", "/data", read_only=True)),
        ("cache:/cache:rw", Volume("cache", "/cache")),
    ],
)
def test_volumes_parse(text: str, volume: Volume) -> None:
    """Named volumes (with {session}) and host folders, read-only or not."""
    assert parse_volume(text) == volume


@pytest.mark.parametrize("text", ["x", "a:b", "a:/b:rx", "bad name:/x", "a:/b:ro:z"])
def test_bad_volumes_are_refused(text: str) -> None:
    """No target, a relative target, a bad mode, a bad name, too many parts."""
    with pytest.raises(ValueError, match=repr(text)):
        parse_volume(text)


@pytest.mark.parametrize(
    ("value", "size"),
    [(8388608, 8388608), ("512m", 512 * 2**20), ("2g", 2 * 2**30), ("1.5GiB", 3 * 2**29)],
)
def test_memory_sizes_count_in_1024s_like_docker(value: int | str, size: int) -> None:
    """Bytes, or k/m/g/t (with or without b / ib), each 1024 times the last."""
    assert parse_memory(value) == size


def test_the_create_body_publishes_on_loopback_and_hashes_its_spec() -> None:
    """Without a network the port is published on 127.0.0.1 at a port Docker picks; the
    spec label changes with the spec and only with it."""
    spec = ContainerSpec(image="lab", port=8888, env={"A": "1"})
    body = create_body(spec, session="alice", instance="prod", template="lab")
    assert body["HostConfig"]["PortBindings"] == {
        "8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
    }
    assert body["Labels"]["siesta.session"] == "alice"
    same = create_body(spec, session="alice", instance="prod", template="lab")
    other = create_body(
        ContainerSpec(image="lab", port=8888, env={"A": "2"}),
        session="alice",
        instance="prod",
        template="lab",
    )
    assert same["Labels"]["siesta.spec"] == body["Labels"]["siesta.spec"]
    assert other["Labels"]["siesta.spec"] != body["Labels"]["siesta.spec"]


def test_answers_from_docker_are_read() -> None:
    """The published port or the network address; an exit's reason; usage less cache."""
    ports = {"NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3"}]}}}
    assert endpoint_of(ports, 80, None) == Endpoint("127.0.0.1", 3)
    assert endpoint_of(ports, 81, None) is None
    networks = {"NetworkSettings": {"Networks": {"lab": {"IPAddress": "10.1.2.3"}}}}
    assert endpoint_of(networks, 80, "lab") == Endpoint("10.1.2.3", 80)
    state = {"State": {"ExitCode": 137, "OOMKilled": True}}
    assert exit_reason(state) == "container exited with code 137 (killed: out of memory)"
    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
        "memory_stats": {"usage": 1000, "stats": {"total_inactive_file": 200}},
    }
    assert usage_of(stats) == (2.5, 800)
    assert usage_of({"cpu_stats": {}, "memory_stats": {}}) is None
