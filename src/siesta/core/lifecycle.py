"""The allowed moves between session states, and the failure backoff.

The lifecycle runner (`siesta.lifecycle`) asks `check_transition` before every
change, so an impossible move is a bug caught at once, not a corrupt record.
"""

from __future__ import annotations

from .model import State

ALLOWED: dict[State, frozenset[State]] = {
    State.ASLEEP: frozenset({State.WAKING, State.AWAKE}),  # AWAKE: re-adopted after restart
    State.WAKING: frozenset({State.AWAKE, State.ASLEEP, State.FAILED}),
    State.AWAKE: frozenset({State.STOPPING, State.ASLEEP}),  # ASLEEP: backend exited
    State.STOPPING: frozenset({State.ASLEEP}),
    State.FAILED: frozenset({State.WAKING, State.ASLEEP}),
}


class TransitionError(RuntimeError):
    """A move the state machine does not allow."""


def check_transition(old: State, new: State) -> None:
    """Raise `TransitionError` unless `old -> new` is an allowed move."""
    if new not in ALLOWED[old]:
        raise TransitionError(f"{old} -> {new} is not an allowed transition")


def backoff_delay(failures: int, base: float, cap: float = 600.0) -> float:
    """Seconds a session refuses wakes after `failures` consecutive failed starts.

    `base` after the failure that made it FAILED, doubling for each one after, capped.
    """
    return float(min(cap, base * 2 ** max(0, failures - 1)))


def after_failed_start(failures: int, max_failures: int) -> State:
    """The state a session takes when a start fails for the `failures`-th time in a row."""
    return State.FAILED if failures >= max_failures else State.ASLEEP
