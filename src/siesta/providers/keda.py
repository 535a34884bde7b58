"""Backends KEDA scales on Kubernetes: the `keda` provider.

siesta does not touch the Kubernetes API in this mode. `start` only marks the
session active and returns the address of its Service; the lifecycle's transition
to WAKING is what the External Scaler stream (`siesta.keda.scaler`) pushes to KEDA
as `true`, and KEDA scales the workload from zero. The lifecycle's readiness probe
then waits for the address to answer. `stop` marks the session inactive: from then
on `IsActive` answers false and KEDA scales to zero after its cooldown.

Used by the app, behind `providers.dispatch.ByTemplate`, for templates with
`provider: keda`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from siesta.core.model import Endpoint

from .base import BackendStatus, ExitHandler, RunningBackend, StartError, Usage

DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressTemplate(Protocol):
    """What the keda provider reads from a template."""

    @property
    def address(self) -> str | None: ...


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

    def __init__(self, templates: Mapping[str, AddressTemplate]):
        self._templates = templates
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
        """Keeps nothing: after a restart, sessions wake again through KEDA."""
        return []

    def measures(self, template: str) -> bool:
        """No: siesta does not read the cluster's metrics in this mode."""
        return False

    async def usage(self, session: str) -> Usage | None:
        return None

    async def logs(self, session: str, lines: int = 100) -> str:
        return ""  # the pod's log is Kubernetes' to show (kubectl logs)

    async def close(self) -> None:
        self._active.clear()
