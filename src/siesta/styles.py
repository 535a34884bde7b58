"""How the terminal shows things: one place for the CLI and the demo."""

from __future__ import annotations

from siesta.core.model import State

STATE_STYLE = {
    State.AWAKE: "bold green",
    State.WAKING: "yellow",
    State.STOPPING: "yellow",
    State.ASLEEP: "dim",
    State.FAILED: "bold red",
}
"""The Rich style of each session state."""
