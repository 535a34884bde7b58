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
- `usage` answers the backend's cumulative CPU time and current memory, or None when
  it is not running or the provider cannot measure it (`measures(template)` says which
  ahead, so the config check can refuse rules over `cpu_percent` / `memory_bytes`).
  Window averages (`cpu_percent`) are computed by the caller from successive answers,
  never by the provider, so when or how often it is asked changes nothing.
- `logs` answers the last lines of the backend's output (for `siesta logs` and the
  failure page); an empty string when there is none.
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
    template: str = ""  # the session's template, when known (adoption routes by it)


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """What the provider can tell about a backend right now."""

    running: bool
    cpu_percent: float = 0.0
    memory_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """A backend's resource use as measured now.

    `cpu_seconds` is the CPU time (user + system) used by the whole backend (every
    process of it, or the whole container) since it started: it only grows.
    `memory_bytes` is the whole backend's resident memory right now.
    """

    cpu_seconds: float
    memory_bytes: int


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

    def measures(self, template: str) -> bool:
        """Whether `usage` can answer for backends of `template`."""
        ...

    async def usage(self, session: str) -> Usage | None:
        """The backend's cumulative CPU time and current memory; None if not running."""
        ...

    async def logs(self, session: str, lines: int = 100) -> str:
        """The last `lines` lines of the backend's output ("" when there is none)."""
        ...

    async def close(self) -> None:
        """Release watchers (does not stop backends)."""
        ...
