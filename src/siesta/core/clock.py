"""Time as a dependency, so timers can be tested without sleeping.

The lifecycle runner and the controller take a `Clock`; tests hand them a
`siesta.testing.FakeClock`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where siesta reads the time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; used for durations and timers."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch; used for records people read."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
