"""One timer loop for the heaps of due times that the controller and the resource
sampler keep (one entry per awake session, sleeping sessions absent).

`run_timer` calls `tick` (which handles what is due), then sleeps until the earliest
due time, or until `changed` says an earlier one was pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from siesta.core.clock import Clock

IDLE_WAIT = 3600.0  # seconds slept with nothing due (a push wakes the loop anyway)


async def run_timer(
    tick: Callable[[], Awaitable[object]],
    heap: list[tuple[float, str]],
    changed: asyncio.Event,
    clock: Clock,
) -> None:
    """Run `tick` whenever the earliest entry of `heap` is due, until cancelled."""
    while True:
        await tick()
        delay = heap[0][0] - clock.monotonic() if heap else IDLE_WAIT
        changed.clear()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), delay)
