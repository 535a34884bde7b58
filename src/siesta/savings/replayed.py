"""Ledger accounts from a replayed trace (`siesta report --trace`): what siesta would
have saved on recorded activity.

Each replayed wake becomes ASLEEP -> WAKING then WAKING -> AWAKE `wake_seconds` later,
each sleep AWAKE -> ASLEEP (replay stops instantly), fed through the same
`siesta.ledger.apply` as live events. The trace's `cpu` samples (percent of one core,
each holding until the next) are integrated over every awake span into CPU-seconds.
The trace has no memory figures: memory is what the template declares.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from siesta.core.model import State, Transition
from siesta.ledger import Account, add_usage, apply, closed_at, open_account
from siesta.replay import Report, TraceEvent


def transitions(report: Report) -> list[Transition]:
    """The replay's wakes and sleeps as lifecycle events, in time order."""
    events = []
    for session in report.sessions:
        for change in session.changes:
            if change.what == "wake":
                events.append(
                    Transition(
                        session.session, change.at, State.ASLEEP, State.WAKING, change.reason
                    )
                )
                ready = change.at + report.wake_seconds
                events.append(
                    Transition(
                        session.session,
                        ready,
                        State.WAKING,
                        State.AWAKE,
                        change.reason,
                        report.wake_seconds,
                    )
                )
            else:
                events.append(
                    Transition(session.session, change.at, State.AWAKE, State.ASLEEP, change.reason)
                )
    events.sort(key=lambda e: e.at)
    return events


def accounts(report: Report, rows: Sequence[TraceEvent]) -> list[Account]:
    """Each replayed session's account over the trace's span, CPU use included."""
    found = []
    events = transitions(report)
    for session in report.sessions:
        account = open_account(session.session, session.template, report.start)
        spans: list[tuple[float, float]] = []
        began: float | None = None
        for event in (e for e in events if e.session == session.session):
            if event.new is State.WAKING:
                began = event.at
            elif event.new is State.ASLEEP and began is not None:
                spans.append((began, event.at))
                began = None
            account = apply(account, event)
        if began is not None:
            spans.append((began, report.end))
        samples = [
            (r.at, float(r.value))
            for r in rows
            if r.session == session.session and r.event == "cpu"
        ]
        for start, end in spans:
            used = cpu_seconds(samples, start, end)
            account = add_usage(account, used, 0.0, 0, end - start)
        found.append(closed_at(account, report.end))
    return found


def cpu_seconds(samples: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """CPU-seconds over [start, end) from (time, percent of a core) samples that hold
    until the next one (0 % before the first)."""
    total, level, at = 0.0, 0.0, start
    for when, percent in sorted(samples):
        if when >= end:
            break
        if when > at:
            total += level * (when - at)
            at = when
        level = percent / 100
    return total + level * max(0.0, end - at)
