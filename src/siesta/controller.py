"""Timers that put idle sessions to sleep.

Each awake session has one next-due time in a heap; the controller wakes up at
the earliest, evaluates only the sessions that are due (`core.policy.decide`)
and asks the lifecycle to put them to sleep. Sleeping sessions are not in the
heap at all, so they cost nothing. Activity does not touch the heap: a session
that was busy is simply re-scheduled when its check comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Mapping
from typing import Protocol

from siesta.core.clock import Clock, SystemClock
from siesta.core.model import Session, State
from siesta.core.policy import decide
from siesta.lifecycle import Lifecycle

log = logging.getLogger("siesta.controller")


class IdleTemplate(Protocol):
    """What the controller reads from a template."""

    @property
    def idle_timeout(self) -> float: ...


class Controller:
    """Schedules and runs the idle checks of awake sessions."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        templates: Mapping[str, IdleTemplate],
        clock: Clock | None = None,
    ):
        self._lifecycle = lifecycle
        self._templates = templates
        self._clock = clock or SystemClock()
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._sleeps: set[asyncio.Task[None]] = set()
        lifecycle.listeners.append(self._on_transition)
        for session in lifecycle.sessions.values():
            if session.state is State.AWAKE:
                self._schedule_from_now(session)

    def next_due(self, session_id: str) -> float | None:
        """When `session_id` is next checked (monotonic), or None when it is not awake."""
        return self._due.get(session_id)

    def _on_transition(self, session: Session, old: State, new: State) -> None:
        if new is State.AWAKE:
            self._schedule_from_now(session)
        else:
            self._due.pop(session.id, None)

    def _schedule_from_now(self, session: Session) -> None:
        timeout = self._templates[session.template].idle_timeout
        self._schedule(session.id, self._clock.monotonic() + timeout)

    def _schedule(self, session_id: str, at: float) -> None:
        self._due[session_id] = at
        heapq.heappush(self._heap, (at, session_id))
        if self._heap[0][1] == session_id:
            self._changed.set()

    def tick(self) -> list[str]:
        """Evaluate every session due by now; start the sleeps; return who was put to sleep."""
        now = self._clock.monotonic()
        sleeping: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            at, sid = heapq.heappop(self._heap)
            if self._due.get(sid) != at:
                continue  # superseded by a later schedule, or no longer awake
            del self._due[sid]
            if self._check(sid, now):
                sleeping.append(sid)
        return sleeping

    def _check(self, sid: str, now: float) -> bool:
        session = self._lifecycle.get(sid)
        if session is None or session.state is not State.AWAKE:
            return False
        activity = session.activity
        decision = decide(
            now=now,
            last_activity=activity.last_activity,
            inflight=activity.inflight,
            idle_timeout=self._templates[session.template].idle_timeout,
        )
        if not decision.sleep:
            self._schedule(sid, decision.next_check)
            return False
        task = self._lifecycle.begin_sleep(sid, decision.reason)
        if task is None:
            return False
        self._sleeps.add(task)
        task.add_done_callback(self._sleep_done)
        return True

    def _sleep_done(self, task: asyncio.Task[None]) -> None:
        self._sleeps.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("putting a session to sleep failed", exc_info=task.exception())

    async def run(self) -> None:
        """Run the timers until cancelled."""
        while True:
            self.tick()
            delay = self._heap[0][0] - self._clock.monotonic() if self._heap else 3600.0
            self._changed.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)

    async def close(self) -> None:
        """Wait for sleeps under way."""
        await asyncio.gather(*self._sleeps, return_exceptions=True)
