"""When an awake session should go to sleep: a decision with its reason.

The controller calls `decide` for a session that is due; the answer says whether
to sleep now and, if not, when to look again. For now the rule is the template's
`idle_timeout`: asleep once no byte moved for that long and no request is in flight
(an open but silent connection, such as an idle websocket, does not keep it awake).
"""

from __future__ import annotations

from dataclasses import dataclass

from .duration import format_duration


@dataclass(frozen=True, slots=True)
class Decision:
    """Sleep now (with the reason), or look again at `next_check` (monotonic)."""

    sleep: bool
    reason: str
    next_check: float


def decide(*, now: float, last_activity: float, inflight: int, idle_timeout: float) -> Decision:
    """Apply the idle rule to one session's activity at monotonic time `now`."""
    idle_for = max(0.0, now - last_activity)
    if inflight > 0:
        return Decision(False, f"{inflight} request(s) in flight", now + idle_timeout)
    if idle_for >= idle_timeout:
        return Decision(
            True,
            f"idle for {format_duration(idle_for)} >= idle_timeout {format_duration(idle_timeout)}",
            now + idle_timeout,
        )
    return Decision(False, f"idle for {format_duration(idle_for)}", last_activity + idle_timeout)
