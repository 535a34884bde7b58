"""Helpers for testing code that uses siesta: a clock you move by hand.

Public on purpose (like `structlog.testing`): the controller and lifecycle take a
`Clock`, and tests hand them a `FakeClock` to assert "slept at 15:00.0" without
sleeping for fifteen minutes.
"""

from __future__ import annotations


class FakeClock:
    """A `Clock` that only moves when told to."""

    def __init__(self, start: float = 1_000.0, wall: float = 1_700_000_000.0):
        self._now = start
        self._wall_offset = wall - start

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self._now += seconds
