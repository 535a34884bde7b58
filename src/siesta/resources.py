"""What each awake backend uses, sampled on a timer of its own: the resource signals.

`siesta.app` starts one `Sampler` beside the controller. For every AWAKE session
whose provider measures its template (`Provider.measures`), it asks the provider
for `usage()` (cumulative CPU seconds and current memory of the whole backend)
every `cpu_window / SAMPLES_PER_WINDOW` seconds when the session's policy reads
`cpu_percent` or `memory_bytes`, else every `TOTALS_EVERY` seconds (for the
totals alone). From those samples:

- `window(id)`: `cpu_percent`, the average CPU use over the last `cpu_window`
  (100 = one core busy all along; since the wake when that is more recent), and
  `memory_bytes`, the resident memory of the last sample. Only samples taken by
  this timer count, so when or how often checks and `policy explain` read it
  changes nothing;
- `totals(id)`: CPU seconds, memory GiB-hours and peak memory while awake, since
  siesta started or the session was loaded;
- `on_sleep` hooks, called with the session and the totals of the awake period that
  just ended (after a last sample, when the provider still answers).

Sleeping sessions are not sampled and cost nothing. A provider that fails to answer
is skipped until the next sample; it never stops the timer.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from siesta.core.clock import Clock, SystemClock
from siesta.core.model import Session, State
from siesta.providers.base import Usage
from siesta.signals import Window
from siesta.timers import run_timer

__all__ = ["Sampler", "SamplerTemplate", "SleepHook", "Totals", "Window", "sampler_templates"]

log = logging.getLogger("siesta.resources")

SAMPLES_PER_WINDOW = 6
"""Samples per `cpu_window`: the window's average is off by at most 1/6 of it in time."""
MIN_EVERY = 0.25  # seconds: the fastest sampling, whatever the window
MAX_EVERY = 10.0  # seconds: the slowest sampling of a session whose policy reads cpu
TOTALS_EVERY = 60.0
"""Seconds between samples of a session whose policy reads neither cpu nor memory: the
totals need no more (a last sample is taken when it goes to sleep)."""
GIB = 1 << 30
USAGE_TIMEOUT = 5.0  # seconds a provider gets to answer usage(); then the sample is missed


@dataclass(frozen=True, slots=True)
class Totals:
    """Resources used while awake: CPU seconds, memory GiB-hours, peak resident memory."""

    cpu_seconds: float = 0.0
    memory_gib_hours: float = 0.0
    peak_memory_bytes: int = 0

    def plus(self, other: Totals) -> Totals:
        """Both added up (the peak is the larger)."""
        return Totals(
            self.cpu_seconds + other.cpu_seconds,
            self.memory_gib_hours + other.memory_gib_hours,
            max(self.peak_memory_bytes, other.peak_memory_bytes),
        )


class Sessions(Protocol):
    """What the sampler reads of the lifecycle: the sessions, and where to listen."""

    @property
    def sessions(self) -> Mapping[str, Session]: ...
    @property
    def listeners(self) -> list[Callable[[Session, State, State], None]]: ...


class Measuring(Protocol):
    """What the sampler asks of the provider (`Provider.measures`, `Provider.usage`)."""

    def measures(self, template: str) -> bool: ...
    async def usage(self, session: str) -> Usage | None: ...


SleepHook = Callable[[str, Totals], None]
"""Called with (session id, totals of the awake period that ended) when a session sleeps."""


class SamplerTemplate:
    """How one template is sampled: its `cpu_window`, and whether its policy reads it."""

    __slots__ = ("every", "reads", "window")

    def __init__(self, window: float, reads: bool):
        self.window, self.reads = window, reads
        self.every = (
            min(MAX_EVERY, max(MIN_EVERY, window / SAMPLES_PER_WINDOW)) if reads else TOTALS_EVERY
        )


@dataclass(slots=True)
class _Track:
    """The samples of one awake session, and what it used so far."""

    spec: SamplerTemplate
    samples: deque[tuple[float, float]] = field(default_factory=deque)  # (monotonic, cpu s)
    memory: int = 0
    period: Totals = Totals()  # this awake period
    earlier: Totals = Totals()  # the awake periods before it
    due: float = 0.0
    fresh: bool = False  # started by this siesta: its usage counts from zero


class Sampler:
    """Samples the awake sessions' usage on its own timer; see the module's docstring."""

    def __init__(
        self,
        lifecycle: Sessions,
        provider: Measuring,
        templates: Mapping[str, SamplerTemplate],
        *,
        clock: Clock | None = None,
    ):
        self._provider = provider
        self._templates = templates
        self._clock = clock or SystemClock()
        self._tracks: dict[str, _Track] = {}
        self._done: dict[str, Totals] = {}  # totals of sessions asleep now
        self._heap: list[tuple[float, str]] = []
        self._changed = asyncio.Event()
        self._waking: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_sleep: list[SleepHook] = []
        self.failures = 0
        lifecycle.listeners.append(self._on_transition)
        for session in lifecycle.sessions.values():
            if session.state is State.AWAKE:
                self._begin(session, fresh=False)

    # -- what it tells --------------------------------------------------------------

    def window(self, session_id: str) -> Window | None:
        """CPU over the template's `cpu_window` and memory now; None before two samples."""
        track = self._tracks.get(session_id)
        if track is None or len(track.samples) < 2:
            return None
        samples = track.samples
        last_at, last_cpu = samples[-1]
        first_at, first_cpu = samples[0]
        for at, cpu in samples:  # the newest sample at least a window before the last
            if at > last_at - track.spec.window:
                break
            first_at, first_cpu = at, cpu
        elapsed = last_at - first_at
        percent = 100.0 * max(0.0, last_cpu - first_cpu) / elapsed if elapsed > 0 else 0.0
        return Window(percent, track.memory)

    def ready_at(self, session_id: str) -> float | None:
        """When (monotonic) `window` will first answer for an awake session; None if never."""
        track = self._tracks.get(session_id)
        if track is None:
            return None
        if len(track.samples) >= 2:
            return self._clock.monotonic()
        return track.due + (0.0 if track.samples else track.spec.every)

    def totals(self, session_id: str) -> Totals:
        """What the session used while awake, since siesta started or loaded it."""
        track = self._tracks.get(session_id)
        if track is None:
            return self._done.get(session_id, Totals())
        return track.earlier.plus(track.period)

    def measured(self, session_id: str) -> bool:
        """Whether the session is being sampled (awake, on a provider that measures)."""
        return session_id in self._tracks

    # -- following the lifecycle ----------------------------------------------------

    def _on_transition(self, session: Session, old: State, new: State) -> None:
        if new is State.WAKING:
            self._waking.add(session.id)
        elif new is State.AWAKE:
            self._begin(session, fresh=session.id in self._waking)
            self._waking.discard(session.id)
        elif old is State.AWAKE:
            self._end(session.id)
        else:
            self._waking.discard(session.id)

    def _begin(self, session: Session, *, fresh: bool) -> None:
        spec = self._templates.get(session.template)
        if spec is None or not self._provider.measures(session.template):
            return
        earlier = self._done.pop(session.id, Totals())
        now = self._clock.monotonic()
        track = _Track(spec, earlier=earlier, due=now, fresh=fresh)
        self._tracks[session.id] = track
        self._push(session.id, now)

    def _end(self, session_id: str) -> None:
        track = self._tracks.pop(session_id, None)
        if track is None:
            return
        task = asyncio.ensure_future(self._last_sample(session_id, track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _last_sample(self, session_id: str, track: _Track) -> None:
        """Count the usage up to the sleep (while the backend still answers), then tell."""
        usage = await self._usage(session_id)
        if usage is not None:
            self._add(track, self._clock.monotonic(), usage)
        self._done[session_id] = track.earlier.plus(track.period)
        for hook in self.on_sleep:
            try:
                hook(session_id, track.period)
            except Exception:  # a hook's bug never stops the sampler
                log.exception("a resource sleep hook failed")

    # -- sampling ---------------------------------------------------------------------

    def _push(self, session_id: str, at: float) -> None:
        heapq.heappush(self._heap, (at, session_id))
        if self._heap[0][1] == session_id:
            self._changed.set()

    async def tick(self) -> int:
        """Sample every session due by now; return how many were sampled."""
        now = self._clock.monotonic()
        due: list[tuple[str, _Track]] = []
        while self._heap and self._heap[0][0] <= now:
            at, sid = heapq.heappop(self._heap)
            track = self._tracks.get(sid)
            if track is not None and track.due == at:
                due.append((sid, track))
        if not due:
            return 0
        missed: list[str] = []
        answers = await asyncio.gather(*(self._usage(sid, missed) for sid, _ in due))
        if missed:  # one line a round: a busy Docker can miss a hundred at once
            shown = ", ".join(missed[:5]) + (", ..." if len(missed) > 5 else "")
            log.warning("%d of %d sessions gave no usage: %s", len(missed), len(due), shown)
        at = self._clock.monotonic()
        for (sid, track), usage in zip(due, answers, strict=True):
            if self._tracks.get(sid) is not track:
                continue  # went to sleep meanwhile: its last sample is taken there
            if usage is not None:
                self._add(track, at, usage)
            track.due = now + track.spec.every
            self._push(sid, track.due)
        return len(due)

    async def _usage(self, session_id: str, missed: list[str] | None = None) -> Usage | None:
        """The provider's usage of the session, or None (counted in `failures`, and the
        reason added to `missed`, or logged when there is no list)."""
        try:
            return await asyncio.wait_for(self._provider.usage(session_id), USAGE_TIMEOUT)
        except Exception as exc:  # a failure or a timeout is a missing sample, never a crash
            self.failures += 1
            why = f"no answer within {USAGE_TIMEOUT:g}s" if isinstance(exc, TimeoutError) else exc
            if missed is None:
                log.warning("%s: no usage from the provider: %s", session_id, why)
            else:
                missed.append(f"{session_id} ({why})")
            return None

    def _add(self, track: _Track, at: float, usage: Usage) -> None:
        samples = track.samples
        if samples:
            last_at, last_cpu = samples[-1]
            cpu = max(0.0, usage.cpu_seconds - last_cpu)
            hours = (at - last_at) / 3600.0
            memory_hours = (track.memory + usage.memory_bytes) / 2 / GIB * hours
        else:  # the first sample: a backend this siesta started counts from zero
            cpu, memory_hours = (usage.cpu_seconds if track.fresh else 0.0), 0.0
        period = track.period
        track.period = Totals(
            period.cpu_seconds + cpu,
            period.memory_gib_hours + memory_hours,
            max(period.peak_memory_bytes, usage.memory_bytes),
        )
        track.memory = usage.memory_bytes
        samples.append((at, usage.cpu_seconds))
        keep = track.spec.window
        while len(samples) > 2 and samples[1][0] <= at - keep:
            samples.popleft()  # keep the newest sample at least a window old, and newer ones

    # -- running ----------------------------------------------------------------------

    async def run(self) -> None:
        """Sample on the timer until cancelled."""
        await run_timer(self.tick, self._heap, self._changed, self._clock)

    async def close(self) -> None:
        """Wait for the last samples under way (each bounded by USAGE_TIMEOUT)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=USAGE_TIMEOUT + 1.0)


def sampler_templates(
    windows: Mapping[str, float], reads: Mapping[str, bool]
) -> dict[str, SamplerTemplate]:
    """Each template's sampling, from its `cpu_window` and whether its policy reads it."""
    return {
        name: SamplerTemplate(window, reads.get(name, False)) for name, window in windows.items()
    }
