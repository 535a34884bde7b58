"""What sleeping saved: awake and asleep seconds of each session, from its events.

Used by the admin API (`GET /api/savings`). Pure: a function of the event log and
the time now, so it is tested without a clock or a store. Money, energy and CO2e
are later steps on top of these seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from siesta.core.model import State, Transition

RUNNING = frozenset({State.WAKING, State.AWAKE, State.STOPPING})
"""States in which a backend process exists (starting, serving or stopping): they cost."""


@dataclass(frozen=True, slots=True)
class Usage:
    """One session's (or all sessions') time, split by whether a backend ran."""

    awake_seconds: float = 0.0
    asleep_seconds: float = 0.0
    wakes: int = 0
    sleeps: int = 0

    @property
    def always_on_seconds(self) -> float:
        """What the backend would have run without siesta: the whole time tracked."""
        return self.awake_seconds + self.asleep_seconds

    @property
    def saved_fraction(self) -> float:
        """The share of the always-on time that was slept (0 when nothing was tracked)."""
        total = self.always_on_seconds
        return self.asleep_seconds / total if total > 0 else 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.awake_seconds + other.awake_seconds,
            self.asleep_seconds + other.asleep_seconds,
            self.wakes + other.wakes,
            self.sleeps + other.sleeps,
        )


def usage(
    events: Iterable[Transition],
    now: float,
    since: Mapping[str, float] | None = None,
) -> dict[str, Usage]:
    """Usage per session from its events (wall clock), up to `now`.

    A session in `since` is tracked from that time (its creation), ASLEEP, and its
    events before it (of an earlier session of the same id) are ignored; a session
    only in `events` is tracked from its first event, in that event's old state.
    The state after the last event lasts until `now`.
    """
    by_session: dict[str, list[Transition]] = {sid: [] for sid in since or {}}
    for event in events:
        by_session.setdefault(event.session, []).append(event)
    starts = since or {}
    return {
        sid: _one(sorted(evs, key=lambda e: e.at), now, starts.get(sid))
        for sid, evs in by_session.items()
    }


def total(usages: Iterable[Usage]) -> Usage:
    """The sum of several sessions' usage."""
    return sum(usages, Usage())


def _one(events: list[Transition], now: float, start: float | None) -> Usage:
    if start is not None:
        events = [e for e in events if e.at >= start]
        state, at = State.ASLEEP, start
    elif events:
        state, at = events[0].old, events[0].at
    else:
        return Usage()
    awake = asleep = 0.0
    wakes = sleeps = 0
    for event in events:
        span = max(0.0, event.at - at)
        if state in RUNNING:
            awake += span
        else:
            asleep += span
        wakes += event.old is State.WAKING and event.new is State.AWAKE
        sleeps += event.old is State.AWAKE and event.new in (State.STOPPING, State.ASLEEP)
        state, at = event.new, max(at, event.at)
    span = max(0.0, now - at)
    if state in RUNNING:
        awake += span
    else:
        asleep += span
    return Usage(awake, asleep, wakes, sleeps)
