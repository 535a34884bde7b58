"""Gathering a session's policy signals from what siesta already holds in memory.

The controller calls `read_signals` for each due session: durations come from the
clock and the session's timestamps, counts from the gateway's `Activity` counters,
cpu and memory from the provider's status (only when the policy reads them), rates
from a `RateWindow` the controller samples at each check. No I/O here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from siesta.core.model import Session
from siesta.core.policy import Signals
from siesta.providers.base import BackendStatus

RATE_WINDOW = 60.0
"""Seconds the `requests_1m` and `bytes_1m` signals look back."""


class RateWindow:
    """Requests and bytes over the last minute, from cumulative counters sampled at checks.

    Samples are kept for about a minute. With a sample at least a minute old, the
    counts since it are scaled to a minute (an average when checks are far apart);
    without one, the counts since the oldest sample (the wake) are taken as they are.
    """

    __slots__ = ("_samples",)

    def __init__(self, at: float, requests: int, nbytes: int):
        self._samples: deque[tuple[float, int, int]] = deque([(at, requests, nbytes)])

    def sample(self, at: float, requests: int, nbytes: int) -> tuple[int, int]:
        """Record the counters at monotonic time `at`; return (requests, bytes) per minute."""
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= at - RATE_WINDOW:
            samples.popleft()  # keep the newest sample that is at least a minute old
        then, old_requests, old_bytes = samples[0]
        samples.append((at, requests, nbytes))
        elapsed = at - then
        scale = RATE_WINDOW / elapsed if elapsed > RATE_WINDOW else 1.0
        return round((requests - old_requests) * scale), round((nbytes - old_bytes) * scale)


def read_signals(
    session: Session,
    *,
    monotonic: float,
    wall: float,
    rates: tuple[int, int] = (0, 0),
    status: BackendStatus | None = None,
    app: Mapping[str, Any] | None = None,
) -> Signals:
    """The signals of an awake `session` at `monotonic` (and wall-clock `wall`) time."""
    activity = session.activity
    awake_since = monotonic if session.awake_since is None else session.awake_since
    awake_for = max(0.0, monotonic - awake_since)
    return Signals(
        idle_for=max(0.0, monotonic - activity.last_activity),
        awake_for=awake_for,
        age=max(0.0, wall - session.created) if session.created else awake_for,
        connections=activity.connections + activity.elsewhere_connections,
        inflight=activity.inflight + activity.elsewhere_inflight,
        requests_1m=rates[0],
        bytes_1m=rates[1],
        cpu_percent=float(status.cpu_percent) if status is not None else 0.0,
        memory_bytes=int(status.memory_bytes) if status is not None else 0,
        app=app if app is not None else {},
        now=datetime.fromtimestamp(wall, UTC),
        labels=session.labels,
        at=monotonic,
    )
