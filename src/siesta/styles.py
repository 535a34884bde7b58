"""How the terminal shows things: one place for the CLI and the demo."""

from __future__ import annotations

from datetime import datetime

from siesta.core.model import State

STATE_STYLE = {
    State.AWAKE: "bold green",
    State.WAKING: "yellow",
    State.STOPPING: "yellow",
    State.ASLEEP: "dim",
    State.FAILED: "bold red",
}
"""The Rich style of each session state."""


def when(epoch: float) -> str:
    """A time as the CLI and the demo show it: ISO 8601, local time with its offset."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def transition(old: str, new: str) -> str:
    """A state change as the CLI and the demo write it: `ASLEEP -> WAKING`, styled."""
    return f"{styled(old)} -> {styled(new)}"


def styled(state: str) -> str:
    """A state name in its Rich style (unknown names as they are)."""
    style = STATE_STYLE.get(State(state), "") if state in State.__members__ else ""
    return f"[{style}]{state}[/]" if style else state
