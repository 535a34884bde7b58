"""The provider interface: how a session's backend is started, stopped and found again.

Modelled on JupyterHub's Spawner, kept small. The lifecycle runner is the only
caller; it checks readiness itself, so `start` returns as soon as the backend
was launched.

State rules:
- `start` launches the backend and returns where it will listen. It does not wait
  for the backend to be ready. It raises `StartError` when the launch itself fails.
- `stop` returns once the backend is gone (asked politely, then forced after `grace`).
  Stopping a backend that is already gone is not an error.
- When a backend exits on its own, the provider calls the exit handler it was given,
  once, with the session id and a short reason. It does not call it for a `stop`.
- `adopt` is called once at start-up with what the store remembers; it returns the
  backends that are still running and provably the same (pid *and* start time), and
  watches them from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from siesta.core.model import Endpoint

ExitHandler = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class RunningBackend:
    """A backend that runs: where it listens and how to recognise its process."""

    session: str
    endpoint: Endpoint
    pid: int | None = None
    pid_started: float | None = None


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """What the provider can tell about a backend right now."""

    running: bool
    cpu_percent: float = 0.0
    memory_bytes: int = 0


class StartError(Exception):
    """The backend could not be launched; the message is safe to show to users."""


class Provider(Protocol):
    """Starts and stops the backends of sessions."""

    def set_exit_handler(self, handler: ExitHandler) -> None:
        """Where to report a backend that exited without being asked to."""
        ...

    async def start(self, session: str, template: str) -> RunningBackend:
        """Launch the backend of `session` from `template`; return where it will listen."""
        ...

    async def stop(self, session: str, grace: float) -> None:
        """Stop the backend of `session`: politely, then forcibly after `grace` seconds."""
        ...

    def alive(self, session: str) -> bool:
        """Whether the backend of `session` is still running (cheap; used while waking)."""
        ...

    async def status(self, session: str) -> BackendStatus:
        """Running, and its resource use."""
        ...

    async def adopt(self, candidates: list[RunningBackend]) -> list[RunningBackend]:
        """Take over the backends from `candidates` that still run; return those."""
        ...

    async def close(self) -> None:
        """Release watchers (does not stop backends)."""
        ...
