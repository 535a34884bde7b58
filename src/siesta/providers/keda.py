"""Backends KEDA scales on Kubernetes: the `keda` provider.

siesta does not touch the Kubernetes API in this mode. `start` only marks the
session active and returns the address of its Service; the lifecycle's transition
to WAKING is what the External Scaler stream (`siesta.keda.scaler`) pushes to KEDA
as `true`, and KEDA scales the workload from zero. The lifecycle's readiness probe
then waits for the address to answer. `stop` marks the session inactive: from then
on `IsActive` answers false and KEDA scales to zero after its cooldown. After a
restart, `adopt` probes each remembered address once (the template's readiness
check, its timeout): a session whose backend answers stays awake, so `IsActive`
says true for it at once.

Used by the app, behind `providers.dispatch.ByTemplate`, for templates with
`provider: keda`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

from siesta.core.model import Endpoint
from siesta.readiness import ReadySpec

from .base import BackendStatus, ExitHandler, RunningBackend, StartError, Usage

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_LABEL = 63  # characters of a Kubernetes name that is a DNS label (RFC 1123)
HPA_PREFIX = "keda-hpa-"  # KEDA names the HorizontalPodAutoscaler of a ScaledObject so
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def host_of(address: str) -> str:
    """The host part of `address` as written (placeholders and case kept)."""
    rest = address.split("://", 1)[-1]
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def default_scaled_object(address: str) -> str:
    """The ScaledObject's name when the template does not give one: the address's first
    host label (the Service's name, as in deploy/kubernetes/session-example)."""
    return host_of(address).split(".", 1)[0]


def name_problem(address: str, scaled_object: str | None, session: str) -> str | None:
    """Why `session` cannot be a session of a keda template (a Kubernetes name it makes
    would be invalid or too long), or None.

    Checked: each host label of `address` that has `{session}` in it, and
    `keda-hpa-<scaled_object>` (KEDA 2.20 and later refuse a longer HPA name).
    """
    for label in host_of(address).split("."):
        if "{session}" not in label:
            continue
        name = label.replace("{session}", session)
        if not _DNS_LABEL.match(name):
            return (
                f"session {session!r} would name the Service {name!r}, which must be "
                "lowercase letters, digits and '-' (a DNS label)"
            )
        if len(name) > MAX_LABEL:
            return f"session {session!r} would make the host name label {name!r} over 63"
    pattern = scaled_object or default_scaled_object(address)
    hpa = HPA_PREFIX + pattern.replace("{session}", session)
    if len(hpa) > MAX_LABEL:
        longest = MAX_LABEL - len(HPA_PREFIX + pattern.replace("{session}", ""))
        return (
            f"session {session!r} is too long: KEDA would name its HPA {hpa!r} "
            f"({len(hpa)} characters, over Kubernetes' 63); use at most {longest}"
        )
    return None


class AddressTemplate(Protocol):
    """What the keda provider reads from a template."""

    @property
    def address(self) -> str | None: ...
    @property
    def ready_spec(self) -> ReadySpec: ...


def endpoint_of(address: str, session: str) -> Endpoint:
    """Host and port of `address` ("http://nb-{session}.ns.svc:8888") for `session`."""
    url = urlsplit(address.replace("{session}", session))
    try:
        port = url.port or DEFAULT_PORTS.get(url.scheme)
    except ValueError as exc:
        raise StartError(f"address {address!r}: {exc}") from None
    if not url.hostname or port is None:
        raise StartError(f"address {address!r} names no host and port")
    return Endpoint(url.hostname, port)


class KedaProvider:
    """`Provider` for sessions whose backend KEDA scales; keeps only an active flag."""

    def __init__(
        self,
        templates: Mapping[str, AddressTemplate],
        *,
        base_url: Callable[[str], str] = lambda session: "/",
    ):
        self._templates = templates
        self._base_url = base_url
        self._active: set[str] = set()

    def set_exit_handler(self, handler: ExitHandler) -> None:
        """Unused: a Kubernetes backend's exit is seen by the readiness probe, not here."""

    async def start(self, session: str, template: str) -> RunningBackend:
        address = self._templates[template].address
        if address is None:
            raise StartError(f"template {template!r} has no address")
        endpoint = endpoint_of(address, session)
        self._active.add(session)
        return RunningBackend(session, endpoint)

    async def stop(self, session: str, grace: float) -> None:
        self._active.discard(session)

    def alive(self, session: str) -> bool:
        return session in self._active

    async def status(self, session: str) -> BackendStatus:
        return BackendStatus(running=session in self._active)

    async def adopt(self, candidates: list[RunningBackend]) -> list[RunningBackend]:
        """The candidates of keda templates whose address answers its readiness probe
        (one probe each, all at once, each bounded by the probe's timeout)."""
        mine = [c for c in candidates if c.template in self._templates]
        answers = await asyncio.gather(*(self._answers(c) for c in mine))
        adopted = [c for c, ready in zip(mine, answers, strict=True) if ready]
        self._active.update(c.session for c in adopted)
        return adopted

    async def _answers(self, candidate: RunningBackend) -> bool:
        template = self._templates[candidate.template]
        if template.address is None:
            return False
        try:
            endpoint = endpoint_of(template.address, candidate.session)
        except StartError:
            return False
        spec = template.ready_spec
        probe = spec.probe(endpoint, candidate.session, self._base_url(candidate.session))
        try:
            return await probe()
        except Exception:  # a probe never fails the adoption of the others
            return False

    def measures(self, template: str) -> bool:
        """No: siesta does not read the cluster's metrics in this mode."""
        return False

    async def usage(self, session: str) -> Usage | None:
        return None

    async def logs(self, session: str, lines: int = 100) -> str:
        return ""  # the pod's log is Kubernetes' to show (kubectl logs)

    async def close(self) -> None:
        self._active.clear()
