"""The nouns: session state, endpoints, activity counters.

Shared by every layer; holds data only. `Activity` is mutated by the gateway on
the hot path (plain attribute writes, no locks: one event loop owns it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class State(enum.StrEnum):
    """Where a session's backend is in its life. See `core.lifecycle` for the moves."""

    ASLEEP = "ASLEEP"
    WAKING = "WAKING"
    AWAKE = "AWAKE"
    STOPPING = "STOPPING"
    FAILED = "FAILED"


class Endpoint(NamedTuple):
    """Where a running backend listens (a tuple: hashed in C, it keys the upstream pool)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(slots=True)
class Activity:
    """In-memory activity counters of one session, written by the gateway.

    `last_activity` is a monotonic timestamp of the last byte seen in either
    direction; `connections` counts client connections currently bound to the
    session (a tunnelled websocket, or a request in flight); `inflight` counts
    requests whose response has not finished.
    """

    last_activity: float = 0.0
    connections: int = 0
    inflight: int = 0
    requests: int = 0
    bytes: int = 0
    held: int = 0


@dataclass(slots=True)
class Session:
    """One user session: its identity, its state and what it is doing."""

    id: str
    template: str
    labels: dict[str, str] = field(default_factory=dict)
    state: State = State.ASLEEP
    endpoint: Endpoint | None = None
    pid: int | None = None
    pid_started: float | None = None
    activity: Activity = field(default_factory=Activity)
    awake_since: float | None = None  # monotonic
    failures: int = 0
    retry_at: float = 0.0  # monotonic; a FAILED session refuses wakes before this
    created: float = 0.0  # wall clock
    fence: int = 0  # fencing token of the wake that started the current backend


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change as the store records it."""

    session: str
    at: float  # wall clock
    old: State
    new: State
    reason: str
    wake_seconds: float | None = None
