"""The pure side of the docker provider: what a session's container looks like.

The config uses it to check `volumes` and `memory` when the file loads; the docker
provider (`siesta.providers.docker`) uses it to build the Engine API's create
request and to read Docker's answers (inspect, stats). No I/O here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import Endpoint

LABEL_SESSION = "siesta.session"
LABEL_INSTANCE = "siesta.instance"
LABEL_TEMPLATE = "siesta.template"
LABEL_SPEC = "siesta.spec"
"""The labels siesta puts on every container it creates; labels are the record."""

RESERVED_LABEL_PREFIX = "siesta."

PUBLISH_HOST = "127.0.0.1"
"""Where a container port is published: loopback, so only siesta (on this host) reaches it."""

MIN_MEMORY = 6 * 1024 * 1024
"""Docker refuses a memory limit under 6 MiB."""

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclass(frozen=True, slots=True)
class Volume:
    """One entry of a template's `volumes`: a named volume or a host folder, and where."""

    source: str
    target: str
    read_only: bool = False

    @property
    def bind(self) -> bool:
        """A host folder (an absolute path) rather than a named volume."""
        return self.source.startswith("/")


def parse_volume(text: str) -> Volume:
    """`"name:/path"`, `"/host/dir:/path"`, each optionally ending in `:ro` or `:rw`.

    `{session}` may appear in the source. Raises `ValueError` saying what is wrong.
    """
    parts = text.split(":")
    mode = parts.pop() if len(parts) == 3 else "rw"
    if len(parts) != 2 or mode not in ("ro", "rw"):
        raise ValueError(
            f"{text!r} is not source:target[:ro]: write e.g. 'notes-{{session}}:/home/me/work' "
            "or '/srv/shared:/data:ro'"
        )
    source, target = parts
    if not target.startswith("/"):
        raise ValueError(
            f"{text!r}: the target {target!r} must be an absolute path in the container"
        )
    checked = source.replace("{session}", "s")
    if not source.startswith("/") and not _VOLUME_NAME.match(checked):
        raise ValueError(
            f"{text!r}: the source {source!r} must be a volume name (letters, digits, "
            "'_', '.', '-', and {session}) or an absolute host path"
        )
    return Volume(source, target, mode == "ro")


def parse_memory(value: int | float | str) -> int:
    """Bytes from `536870912`, `"512m"`, `"2g"`, `"1.5GiB"` (k, m, g, t count in 1024s, as
    Docker's do). Raises `ValueError` below Docker's minimum of 6 MiB or when unreadable."""
    if isinstance(value, bool):
        raise ValueError("must be a size, e.g. 512m or 2g")
    if isinstance(value, int | float):
        size = int(value)
    else:
        match = _MEMORY.match(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a size: write e.g. 512m or 2g (1024-based)")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < MIN_MEMORY:
        raise ValueError("must be at least 6m (Docker's smallest memory limit)")
    return size


def container_name(instance: str, session: str) -> str:
    """The container's name: one per session and siesta instance, so Docker itself refuses a
    second one. Neither part may contain '.', so no two pairs give the same name."""
    return f"{instance}.{session}"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything a session's container is made from, placeholders already filled in."""

    image: str
    port: int
    command: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    volumes: tuple[Volume, ...] = ()
    network: str | None = None
    cpus: float | None = None
    memory: int | None = None
    labels: Mapping[str, str] | None = None
    user: str | None = None
    read_only: bool = False
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()


def create_body(spec: ContainerSpec, *, session: str, instance: str, template: str) -> Any:
    """The JSON body of `POST /containers/create` for `spec`, labelled with its own hash."""
    port = f"{spec.port}/tcp"
    ours = {LABEL_SESSION: session, LABEL_INSTANCE: instance, LABEL_TEMPLATE: template}
    host: dict[str, Any] = {
        "RestartPolicy": {"Name": "no"},  # siesta alone decides when it runs
        "Mounts": [_mount(v, ours) for v in spec.volumes],
        "ReadonlyRootfs": spec.read_only,
        "CapDrop": list(spec.cap_drop),
        "SecurityOpt": list(spec.security_opt),
    }
    if spec.network is None:
        host["PortBindings"] = {port: [{"HostIp": PUBLISH_HOST, "HostPort": ""}]}
    else:
        host["NetworkMode"] = spec.network
    if spec.cpus is not None:
        host["NanoCpus"] = round(spec.cpus * 1e9)
    if spec.memory is not None:
        host["Memory"] = spec.memory
    body: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in (spec.env or {}).items()],
        "ExposedPorts": {port: {}},
        "Labels": {**(spec.labels or {}), **ours},
        "HostConfig": host,
    }
    if spec.command:
        body["Cmd"] = list(spec.command)
    if spec.user is not None:
        body["User"] = spec.user
    body["Labels"][LABEL_SPEC] = spec_hash(body)
    return body


def _mount(volume: Volume, labels: Mapping[str, str]) -> dict[str, Any]:
    mount: dict[str, Any] = {
        "Type": "bind" if volume.bind else "volume",
        "Source": volume.source,
        "Target": volume.target,
        "ReadOnly": volume.read_only,
    }
    if not volume.bind:  # a volume Docker creates on first use says whose it is
        mount["VolumeOptions"] = {"Labels": dict(labels)}
    return mount


def spec_hash(body: Mapping[str, Any]) -> str:
    """A short hash of a create body (without its own hash label): equal specs, equal hashes."""
    labels = {k: v for k, v in body.get("Labels", {}).items() if k != LABEL_SPEC}
    canonical = json.dumps({**body, "Labels": labels}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def endpoint_of(inspect: Mapping[str, Any], port: int, network: str | None) -> Endpoint | None:
    """Where siesta reaches a running container, from `GET /containers/{id}/json`.

    Without a network: the host port Docker published `port` at on 127.0.0.1. With one:
    the container's address on that network. None when Docker shows neither.
    """
    settings = inspect.get("NetworkSettings") or {}
    if network is not None:
        attached = (settings.get("Networks") or {}).get(network) or {}
        address = attached.get("IPAddress") or attached.get("GlobalIPv6Address")
        return Endpoint(str(address), port) if address else None
    for binding in (settings.get("Ports") or {}).get(f"{port}/tcp") or []:
        if binding.get("HostIp") in (PUBLISH_HOST, "0.0.0.0", "") and binding.get("HostPort"):
            return Endpoint(PUBLISH_HOST, int(binding["HostPort"]))
    return None


def running(inspect: Mapping[str, Any]) -> bool:
    """Whether an inspected container is running (paused counts: its process is there)."""
    return bool((inspect.get("State") or {}).get("Running"))


def exit_reason(inspect: Mapping[str, Any]) -> str:
    """Why an inspected container is not running, in a few words."""
    state = inspect.get("State") or {}
    reason = f"container exited with code {state.get('ExitCode', '?')}"
    if state.get("OOMKilled"):
        reason += " (killed: out of memory)"
    if state.get("Error"):
        reason += f": {state['Error']}"
    return reason


def usage_of(stats: Mapping[str, Any]) -> tuple[float, int] | None:
    """(cumulative CPU seconds, memory bytes) from one `GET /containers/{id}/stats` answer.

    Memory is what `docker stats` shows: usage less the inactive page cache (cgroup v2's
    `inactive_file`, v1's `total_inactive_file`). None when the container is not running
    (Docker answers zeros then).
    """
    cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    memory = stats.get("memory_stats") or {}
    if not cpu or "usage" not in memory:
        return None
    details = memory.get("stats") or {}
    cache = details.get("inactive_file", details.get("total_inactive_file", 0))
    return cpu / 1e9, max(0, int(memory["usage"]) - int(cache))


def reserved_labels(labels: Sequence[str]) -> list[str]:
    """The label keys among `labels` that siesta keeps for itself."""
    return [key for key in labels if key.startswith(RESERVED_LABEL_PREFIX)]
