"""The nouns: session state, endpoints, activity counters.

Shared by every layer; holds data only. `Activity` is mutated by the gateway on
the hot path (plain attribute writes, no locks: one event loop owns it).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Mapping
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

    `watch` is set by the controller when open connections or requests in flight
    are what keeps the session awake: whoever lowers `connections` or `inflight`
    calls `fell()` if it is set, once (it clears itself), so the session is checked
    again at once instead of being polled.
    """

    last_activity: float = 0.0
    connections: int = 0
    inflight: int = 0
    requests: int = 0
    bytes: int = 0
    held: int = 0
    watch: Callable[[], None] | None = None
    # with replicas: the other replicas' open connections and requests in flight, as
    # they told at most a second ago (the gateway here never writes these)
    elsewhere_connections: int = 0
    elsewhere_inflight: int = 0

    def fell(self) -> None:
        """`connections` or `inflight` went down: tell the controller, if it asked."""
        watch, self.watch = self.watch, None
        if watch is not None:
            watch()


MAX_SHARED_LABELS = 4096
"""Distinct label sets shared between sessions; beyond that, each session has its own."""

_shared_labels: dict[frozenset[tuple[str, str]], dict[str, str]] = {}


def share_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """One dict for every session with these labels (read-only by convention).

    Labels are few and repeat across sessions (a team, a tier): 100,000 sessions then
    hold a few hundred dicts instead of 100,000 (a dict of two labels and its strings
    is about 400 bytes). The cache is bounded by `MAX_SHARED_LABELS`.
    """
    if not labels:
        return {}
    key = frozenset(labels.items())
    shared = _shared_labels.get(key)
    if shared is not None:
        return shared
    own = dict(labels)
    if len(_shared_labels) < MAX_SHARED_LABELS:
        _shared_labels[key] = own
    return own


@dataclass(slots=True)
class Session:
    """One user session: its identity, its state and what it is doing.

    `labels` may be shared with other sessions that have the same ones
    (`share_labels`): replace it, never change it in place.
    """

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

    def __post_init__(self) -> None:
        self.template = sys.intern(self.template)
        self.labels = share_labels(self.labels)


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change as the store records it."""

    session: str
    at: float  # wall clock
    old: State
    new: State
    reason: str
    wake_seconds: float | None = None
