"""The one owner of session state: wakes (single-flight), sleeps, failures, adoption.

The gateway asks it to wake a session; the controller asks it to put one to
sleep; the provider tells it when a backend died. Nothing else changes
`Session.state`.

Truth first, then the record: the state in memory always says what the backend
really is. A transition is an intent (WAKING, STOPPING), carried out, then the
outcome; each is handed to the write-behind `Recorder` with its reason, which
makes it durable in its own time. No transition waits for the store, and a store
that fails never leaves a session half-way: it is retried, never rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from siesta.core.clock import Clock, SystemClock
from siesta.core.lifecycle import after_failed_start, backoff_delay, check_transition
from siesta.core.model import Endpoint, Session, State, Transition, share_labels
from siesta.health import Health
from siesta.logconfig import fields
from siesta.providers.base import Provider, RunningBackend
from siesta.readiness import NotReady, ReadySpec, wait_ready
from siesta.store.base import Batch, Registration, SessionRecord, Store
from siesta.store.writer import Recorder

if TYPE_CHECKING:
    from siesta.replicas import Moved, Replicas

log = logging.getLogger("siesta.lifecycle")

STORE_READ_TIMEOUT = 10.0
"""Seconds start-up waits to read the stored sessions before it starts from the config
alone (the store is then degraded; running backends are still found by the provider)."""

SHUTDOWN_FLUSH = 5.0
"""Seconds a clean shutdown waits for pending records to become durable."""

UNKNOWN_ENDPOINT = Endpoint("", 0)
"""Where a backend left by another replica's interrupted wake listens, before the provider
has found it (its record may not have reached the store)."""

CLAIM_TRIES = 3
"""Attempts to take a wake lease before a held request gets 503 (Redis timed out)."""

STOP_RETRY_MAX = 30.0
"""Seconds between retries of a stop that failed, at most (the session stays STOPPING)."""

FULL_RETRY_AFTER = 30.0
"""Seconds a client refused by `max_awake` is told to wait: sessions sleep on idle
timeouts of minutes, so sooner would mostly be refused again."""

ROOM_POLL = 0.1
"""Seconds a wake waiting for `max_awake` to make room looks again at most, while no
awake session is idle (each is serving, or waited for)."""

RUNNING = frozenset({State.WAKING, State.AWAKE, State.STOPPING})
"""States in which a session has a backend, and so takes one of `max_awake`'s places."""

PORT_TAKEN_TRIES = 3
"""Starts of one wake when the backend exits saying its port is in use (another process
took the port siesta drew before the backend bound it), within the wake's start timeout."""

PORT_TAKEN_SIGNS = ("address already in use", "eaddrinuse", "address in use")
"""What runtimes print when a listen fails for a port in use (Python, Node, Go, nginx...)."""

Listener = Callable[[Session, State, State], None]
Observer = Callable[[Transition], None]
"""Called with every event as it is recorded (the admin API's stream, the metrics)."""


class LifecycleTemplate(Protocol):
    """What the lifecycle reads from a template."""

    @property
    def ready_spec(self) -> ReadySpec: ...
    @property
    def remote(self) -> bool: ...
    @property
    def stop_grace(self) -> float: ...
    @property
    def max_start_failures(self) -> int: ...
    @property
    def failure_backoff(self) -> float: ...


class SessionSpec(Protocol):
    """A session as configured."""

    @property
    def template(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


class SessionExists(Exception):
    """`add_session` was given an id that is taken."""


class UnknownTemplate(Exception):
    """`add_session` was given a template that is not configured."""


class WakeError(Exception):
    """A session could not be woken. `retry_after` is what a client should wait (s)."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class AtCapacity(WakeError):
    """A wake refused because `max_awake` sessions run already (and none could be made
    to sleep for it)."""


@dataclass(slots=True)
class _Wake:
    task: asyncio.Task[None]
    started: float


class Lifecycle:
    """Session state, owned in one place."""

    def __init__(
        self,
        templates: Mapping[str, LifecycleTemplate],
        store: Store,
        provider: Provider,
        *,
        start_timeout: float = 60.0,
        clock: Clock | None = None,
        base_url: Callable[[str], str] = lambda session: "/",
        health: Health | None = None,
        retention: float | None = None,
        max_awake: int | None = None,
        evict_idle: bool = False,
    ):
        self.sessions: dict[str, Session] = {}
        # max_awake (issue 9): sessions with a backend, or with a wake begun here, count
        self.max_awake = max_awake
        self.evict_idle = evict_idle
        self.running: set[str] = set()
        self._rooms: dict[str, asyncio.Future[Any]] = {}  # wakes waiting for a place
        self.listeners: list[Listener] = []
        self.awake: set[str] = set()  # ids of AWAKE sessions: periodic work visits only these
        self.observers: list[Observer] = []
        self.health = health or Health()
        self.store = store
        self.recorder = Recorder(store, self.health, snapshot=self.snapshot, retention=retention)
        self._templates = templates
        self._provider = provider
        self._start_timeout = start_timeout
        self._base_url = base_url  # fills {base_url} in readiness paths
        self._clock = clock or SystemClock()
        self._wakes: dict[str, _Wake] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._shared: Replicas | None = None
        self._changed: dict[str, asyncio.Event] = {}  # waiters for another replica's move
        self._unreachable: dict[str, int] = {}  # fences of awake backends we cannot adopt
        self._unsettled: set[str] = set()  # left half-way with no lease, at the last look
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        provider.set_exit_handler(self._backend_exited)

    def get(self, session_id: str) -> Session | None:
        """The session called `session_id`, if there is one."""
        return self.sessions.get(session_id)

    # -- start-up and shutdown -------------------------------------------------

    async def start(self, configured: Mapping[str, SessionSpec]) -> None:
        """Register the configured sessions, load the stored ones, re-adopt running backends.

        A store that cannot be read is not fatal: siesta starts from the config (and
        what the provider finds running), and catches the store up when it answers.
        """
        self._writer = asyncio.create_task(self.recorder.run(), name="store writer")
        now = self._clock.time()
        for sid, spec in configured.items():
            self.recorder.register(sid, spec.template, dict(spec.labels), now)
        stored = {r.id: r for r in await self._stored_sessions()}
        candidates = []
        for r in stored.values():  # backends that may still run: the provider looks
            if r.state in (State.WAKING, State.AWAKE, State.STOPPING) and r.endpoint:
                conf = configured.get(r.id)
                template = r.template if conf is None else conf.template
                if template in self._templates:
                    candidates.append(
                        RunningBackend(r.id, r.endpoint, r.pid, r.pid_started, template)
                    )
        adopted = {b.session: b for b in await self._provider.adopt(candidates)}
        # one session at a time, each record dropped once its session is made: at
        # 100,000 sessions, holding every record (and copies of its labels) at once
        # is what the process's memory would keep (the heap does not shrink back)
        for sid in sorted({*stored, *configured}):
            record = self._merged(sid, stored.pop(sid, None), configured.get(sid), now)
            if self._known_template(record):
                await self._restore(record, adopted.get(sid))

    @staticmethod
    def _merged(
        sid: str, stored: SessionRecord | None, spec: SessionSpec | None, now: float
    ) -> SessionRecord:
        """The stored record, with the configured template and labels when configured."""
        if spec is None:
            assert stored is not None
            return stored
        labels = share_labels(spec.labels)  # one dict per distinct set, not per session
        if stored is None:
            return SessionRecord(sid, spec.template, labels, created=now)
        return replace(stored, template=spec.template, labels=labels)

    async def _stored_sessions(self) -> list[SessionRecord]:
        try:
            return await asyncio.wait_for(self._read_sessions(), STORE_READ_TIMEOUT)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            self.health.degraded("store", detail)
            log.error(
                "cannot read the %s store at start-up (%s): starting from the config; the"
                " store is written again once it answers",
                self.store.kind,
                detail,
            )
            return []

    async def _read_sessions(self) -> list[SessionRecord]:
        await self.store.open()
        return await self.store.sessions()

    def _known_template(self, record: SessionRecord) -> bool:
        if record.template in self._templates:
            return True
        log.warning(
            "session %s: template %r is not configured; skipped", record.id, record.template
        )
        return False

    async def _restore(self, record: SessionRecord, adopted: RunningBackend | None) -> None:
        # Session shares (copies at most once) the labels: no copy of its own needed here
        session = Session(record.id, record.template, record.labels, record.state)
        session.created = record.created
        session.fence = record.fence
        self.sessions[record.id] = session
        if self._shared is not None:
            self._restore_mirror(session, record, adopted)
        elif adopted is not None and record.state is State.AWAKE:
            self._set_backend(session, adopted)
            self._mark_awake_now(session)
            self._record(session, State.AWAKE, "re-adopted its running backend after a restart")
            self._notify(session, State.ASLEEP)
        elif adopted is not None:  # a wake or a sleep was cut short, or never recorded
            self._set_backend(session, adopted)
            await self._stop_backend(session)
            session.endpoint = session.pid = session.pid_started = None
            if record.state is State.ASLEEP:
                log.warning("%s: stopped a backend left running by a crash", session.id)
            else:
                why = f"stopped after a restart found it {record.state}"
                self._move(session, State.ASLEEP, why)
        elif record.state in (State.WAKING, State.AWAKE, State.STOPPING):
            self._move(session, State.ASLEEP, "its backend ended while siesta was down")

    def _restore_mirror(
        self, session: Session, record: SessionRecord, adopted: RunningBackend | None
    ) -> None:
        """With replicas: the stored state is the others' too, so nothing is recorded or
        stopped here. An awake backend this replica cannot adopt is treated as asleep
        (it is woken again here on the next request)."""
        if record.state is State.AWAKE and adopted is not None:
            self._set_backend(session, adopted)
            self._mark_awake_now(session)
            self._notify(session, State.ASLEEP)
        elif record.state is State.AWAKE:
            session.state = State.ASLEEP
            self._unreachable[session.id] = record.fence

    def _set_backend(self, session: Session, backend: RunningBackend) -> None:
        session.endpoint, session.pid = backend.endpoint, backend.pid
        session.pid_started = backend.pid_started

    async def shutdown(self) -> None:
        """Cancel wakes under way, stop every running backend, make the records durable.

        Backends are stopped whatever the store does: records that cannot be written
        within `SHUTDOWN_FLUSH` are reported as lost, and the shutdown goes on.
        """
        self._closing = True
        for wake in list(self._wakes.values()):
            wake.task.cancel()
        await asyncio.gather(*(w.task for w in list(self._wakes.values())), return_exceptions=True)
        awake = [  # a remote backend (keda) is not siesta's: it runs on, and is adopted again
            s
            for s in self.sessions.values()
            if s.state is State.AWAKE and not self._templates[s.template].remote
        ]
        if self._shared is None:
            sleeps = [self.sleep(s.id, "siesta shut down") for s in awake]
            await asyncio.gather(*sleeps, return_exceptions=True)
        elif not await self._hand_over():
            mine = [  # awake, or left half-way by a replica's end (see `settle_interrupted`)
                s
                for s in self.sessions.values()
                if s.state in (State.AWAKE, State.WAKING, State.STOPPING)
                and self._provider.alive(s.id)
                and not self._templates[s.template].remote
            ]
            await asyncio.gather(*(self._stop_at_shutdown(s) for s in mine))
        stops = list(self._stops.values())
        if stops:
            longest = max(t.stop_grace for t in self._templates.values())
            await asyncio.wait(stops, timeout=longest + SHUTDOWN_FLUSH)
        await self._provider.close()
        if not await self.recorder.flush(SHUTDOWN_FLUSH):
            log.error(
                "the %s store did not take the last %d records within %gs: they are lost"
                " (running backends were stopped all the same)",
                self.store.kind,
                self.recorder.pending,
                SHUTDOWN_FLUSH,
            )
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    def snapshot(self) -> Batch:
        """Everything the store should hold of the sessions now (to rewrite a lost store)."""
        batch = Batch()
        now = self._clock.time()
        for session in self.sessions.values():
            reg = Registration(session.template, dict(session.labels), session.created or now)
            batch.registered[session.id] = reg
            if session.state is not State.ASLEEP:
                batch.records[session.id] = SessionRecord.of(session, now)
        return batch

    # -- wake -----------------------------------------------------------------

    async def wake(self, session_id: str, reason: str) -> Session:
        """Make the session AWAKE; concurrent callers share one start (single-flight).

        Raises `WakeError` when the start fails or the session is in failure backoff.
        """
        session = self.sessions.get(session_id)
        if session is None:
            raise WakeError(f"no session {session_id!r}", retry_after=60.0)
        deadline = self._clock.monotonic() + self._start_timeout  # for making room
        while session.state is not State.AWAKE:
            if self.sessions.get(session_id) is not session:
                raise WakeError(f"session {session_id!r} was removed", retry_after=60.0)
            stopping = self._stops.get(session_id)
            if stopping is not None:
                await asyncio.shield(stopping)
                continue
            if self._closing:
                raise WakeError("siesta is shutting down", retry_after=5.0)
            wake = self._wakes.get(session_id)
            if wake is None:
                self._check_backoff(session)
                room = self._make_room(session, deadline)
                if room is not None:  # a stop that fails is the stop's to report
                    await asyncio.gather(asyncio.shield(room), return_exceptions=True)
                    continue  # the place freed may have been taken meanwhile: look again
                wake = self._begin_wake(session, reason)
            try:
                await asyncio.shield(wake.task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not wake.task.cancelled() or (current is not None and current.cancelling()):
                    raise
                # the wake itself was cancelled (shutdown): look again
        return session

    def waking(self, session_id: str) -> bool:
        """Whether a wake of `session_id` is under way here (or waits for a place)."""
        return session_id in self._wakes or session_id in self._rooms

    def _check_backoff(self, session: Session) -> None:
        now = self._clock.monotonic()
        if session.state is State.FAILED and now < session.retry_at:
            raise WakeError(
                f"session {session.id!r} failed to start {session.failures} times in a row;"
                f" next try in {session.retry_at - now:.0f}s",
                retry_after=session.retry_at - now,
            )

    def _begin_wake(self, session: Session, reason: str) -> _Wake:
        """Start the wake task. Called right after `_make_room` found a place, with no
        await between: the place is taken here, so concurrent wakes never exceed it."""
        now = self._clock.monotonic()
        task = asyncio.create_task(self._run_wake(session, reason), name=f"wake {session.id}")
        wake = _Wake(task, now)
        self._wakes[session.id] = wake
        self.running.add(session.id)
        task.add_done_callback(lambda t: self._wake_done(session.id, wake, t))
        return wake

    def _wake_done(self, session_id: str, wake: _Wake, task: asyncio.Task[None]) -> None:
        if self._wakes.get(session_id) is wake:
            del self._wakes[session_id]
        session = self.sessions.get(session_id)
        if session is None or session.state not in RUNNING:
            self.running.discard(session_id)  # a wake that never got as far as WAKING
        if not task.cancelled():
            task.exception()  # retrieved here: the callers that awaited it got it too

    # -- max_awake: a place for each running session (issue 9) -------------------

    def _make_room(self, session: Session, deadline: float) -> Awaitable[Any] | None:
        """None when `session` may begin a wake now (no cap, a place free, or it holds one
        already); else something to wait for, after which the caller looks again. With
        `evict_idle`, that is the sleep of the longest-idle awake session, put to sleep
        for it; when none is idle, the first wake or sleep under way to end (a session
        just woken is idle once served), or `ROOM_POLL`. `AtCapacity` when no place can
        be made (`reject`, or nothing idle before `deadline`)."""
        cap = self.max_awake
        if cap is None or session.id in self.running or len(self.running) < cap:
            return None
        making = self._rooms.get(session.id)
        if making is not None:  # another caller makes room for it already: one eviction
            return making
        room = self._room_for(session, cap, deadline)
        task = asyncio.ensure_future(room)
        self._rooms[session.id] = task
        task.add_done_callback(lambda _: self._room_done(session.id, task))
        return task

    def _room_done(self, session_id: str, task: asyncio.Future[Any]) -> None:
        if self._rooms.get(session_id) is task:
            del self._rooms[session_id]
        if not task.cancelled():
            task.exception()  # the callers that awaited it got it too

    def _room_for(self, session: Session, cap: int, deadline: float) -> Awaitable[Any]:
        full = f"{len(self.running)} sessions run, the most gateway.max_awake allows"
        if not self.evict_idle:
            raise AtCapacity(f"cannot wake {session.id!r}: {full}", FULL_RETRY_AFTER)
        if self._clock.monotonic() > deadline:
            raise AtCapacity(f"cannot wake {session.id!r}: {full}, none of them idle", 5.0)
        victim = self._idlest()
        if victim is not None:
            idle = self._clock.monotonic() - victim.activity.last_activity
            reason = (
                f"evicted: idle {idle:.0f}s, the longest of the awake sessions, to make room"
                f" for {session.id} (gateway.max_awake {cap})"
            )
            stop = self.begin_sleep(victim.id, reason)
            if stop is not None:
                return stop
        under_way = [*self._stops.values(), *(w.task for w in self._wakes.values())]
        return _first_of(under_way, ROOM_POLL)

    def _idlest(self) -> Session | None:
        """The awake session that has gone longest without traffic and that nothing waits
        for: no request in flight (here or on another replica), none held, no wake or
        sleep of its own under way."""
        best: Session | None = None
        for sid in self.awake:
            candidate = self.sessions.get(sid)
            if candidate is None or sid in self._stops or sid in self._wakes:
                continue
            activity = candidate.activity
            if activity.inflight or activity.elsewhere_inflight or activity.held:
                continue
            if best is None or activity.last_activity < best.activity.last_activity:
                best = candidate
        return best

    async def _run_wake(self, session: Session, reason: str) -> None:
        left: RunningBackend | None = None
        if self._shared is None:
            session.fence += 1
            self._move(session, State.WAKING, reason)
        else:
            granted, left = await self._claim(session, reason)
            if not granted:
                return  # woken meanwhile by another replica, whose backend we use
        renewal = self._keep_lease(session)
        try:
            await self._bring_up(session, reason, left)
        finally:
            if renewal is not None:
                renewal.cancel()

    async def _bring_up(self, session: Session, reason: str, left: RunningBackend | None) -> None:
        """Start the backend (or take over the one `left` by an interrupted wake), wait
        until it is ready, and make the session AWAKE; on failure, stop it."""
        template = self._templates[session.template]
        began = self._clock.monotonic()
        deadline = began + self._start_timeout
        tries = 0
        while True:
            tries += 1
            try:
                backend = await self._launch(session, left)
            except asyncio.CancelledError:
                await self._stop_backend(session)  # it may have been launched as we were cancelled
                self._wake_cancelled(session)
                raise
            except Exception as exc:  # StartError, or a provider's bug: the session is not stuck
                self._start_failed(session, _why(exc))
                raise WakeError(f"session {session.id!r} could not start: {_why(exc)}") from exc
            left = None
            session.endpoint, session.pid, session.pid_started = (
                backend.endpoint,
                backend.pid,
                backend.pid_started,
            )
            self._save(session)  # the pid goes to the store first: a crash now orphans nothing
            try:
                spec = template.ready_spec
                await wait_ready(
                    self._probe(session, spec),
                    self._alive(session),
                    max(0.0, deadline - self._clock.monotonic()),
                    cap=spec.interval,
                )
                break
            except asyncio.CancelledError:
                await self._stop_backend(session)
                self._wake_cancelled(session)
                raise
            except Exception as exc:  # NotReady, or a probe's bug
                await self._stop_backend(session)
                if tries < PORT_TAKEN_TRIES and await self._port_was_taken(session, deadline):
                    log.warning(
                        "%s: the backend's port %s was taken before it could bind it: starting"
                        " it again on another port",
                        session.id,
                        backend.endpoint.port,
                    )
                    continue
                self._start_failed(session, _why(exc))
                raise WakeError(f"session {session.id!r} did not start: {_why(exc)}") from exc
        moved = await self._shared_move(session, State.WAKING, State.AWAKE, reason, release=True)
        if not moved:
            if not await self._lost_lease(session):
                return  # the wake goes on there: `wake` follows it
            self._mark_awake_now(session)  # the replica that took over kept our backend
            old, session.state = session.state, State.AWAKE
            self._notify(session, old)
            return
        session.failures = 0
        session.failure = ""
        self._mark_awake_now(session)
        self._move(session, State.AWAKE, reason, wake_seconds=self._clock.monotonic() - began)

    async def _port_was_taken(self, session: Session, deadline: float) -> bool:
        """Whether the backend that just exited said its port was in use (another process
        bound it between siesta's draw and the backend's bind), with time left to retry."""
        if self._provider.alive(session.id) or self._clock.monotonic() >= deadline:
            return False
        try:
            said = await asyncio.wait_for(self._provider.logs(session.id, 20), 2.0)
        except Exception:
            return False
        last_start = said.rsplit("--- siesta: starting", 1)[-1].lower()
        return any(sign in last_start for sign in PORT_TAKEN_SIGNS)

    async def _launch(self, session: Session, left: RunningBackend | None) -> RunningBackend:
        """A new backend, or the one another replica's interrupted wake left running."""
        if left is not None:
            found = await self._provider.adopt([left])
            if found:
                log.info("%s: took over the backend of an interrupted wake", session.id)
                return found[0]
        return await self._provider.start(session.id, session.template)

    def _wake_cancelled(self, session: Session) -> None:
        session.endpoint = session.pid = session.pid_started = None
        self._move(session, State.ASLEEP, "wake cancelled")
        self._spawn(self._shared_move(session, State.WAKING, State.ASLEEP, "wake cancelled", True))

    def _probe(self, session: Session, spec: ReadySpec) -> Callable[[], Awaitable[bool]]:
        endpoint = session.endpoint
        assert endpoint is not None
        return spec.probe(endpoint, session.id, self._base_url(session.id))

    def remote(self, session: Session) -> bool:
        """Whether the session's backend runs elsewhere (keda): not siesta's to start."""
        return self._templates[session.template].remote

    async def recheck(self, session_id: str) -> bool:
        """Probe an AWAKE session's backend until it answers (True) or the wake timeout
        passes (False): after a wake, a remote backend that refuses a connection may be
        a pod going away while its successor starts."""
        session = self.sessions.get(session_id)
        if session is None or session.state is not State.AWAKE or session.endpoint is None:
            return False
        spec = self._templates[session.template].ready_spec
        alive = self._alive(session)
        try:
            await wait_ready(
                self._probe(session, spec),
                lambda: alive() and session.state is State.AWAKE,
                self._start_timeout,
                cap=spec.interval,
            )
        except NotReady:
            return False
        return True

    def _alive(self, session: Session) -> Callable[[], bool]:
        return lambda: self._provider.alive(session.id)

    def _start_failed(self, session: Session, why: str) -> None:
        session.failure = why
        template = self._templates[session.template]
        session.failures += 1
        new = after_failed_start(session.failures, template.max_start_failures)
        if new is State.FAILED:
            over = session.failures - template.max_start_failures + 1
            session.retry_at = self._clock.monotonic() + backoff_delay(
                over, template.failure_backoff
            )
        session.endpoint = session.pid = session.pid_started = None
        reason = f"start failed ({session.failures} in a row): {why}"
        self._move(session, new, reason)
        self._spawn(self._shared_move(session, State.WAKING, new, reason, release=True))

    def _mark_awake_now(self, session: Session) -> None:
        now = self._clock.monotonic()
        session.awake_since = now
        session.activity.last_activity = now

    # -- sessions added and removed at run time ---------------------------------

    async def add_session(
        self, session_id: str, template: str, labels: Mapping[str, str]
    ) -> Session:
        """Register a new session (ASLEEP) running `template`; stored at once.

        Raises `SessionExists` or `UnknownTemplate`; the id's shape is the caller's check.
        """
        if session_id in self.sessions:
            raise SessionExists(f"session {session_id!r} already exists")
        if template not in self._templates:
            known = ", ".join(sorted(self._templates)) or "none"
            raise UnknownTemplate(f"unknown template {template!r} (known: {known})")
        now = self._clock.time()
        session = Session(session_id, template, dict(labels))
        session.created = now
        self.recorder.register(session_id, template, dict(labels), now)
        self._save(session)  # a stale stored row (e.g. of an unconfigured template) is reset
        self.sessions[session_id] = session
        log.info("%s: added (template %s)", session_id, template)
        if self._shared is not None:
            message = {"template": template, "labels": dict(labels), "created": now}
            self._shared.announce({"kind": "added", "session": session_id, **message})
        return session

    async def remove_session(self, session_id: str, reason: str = "session removed") -> None:
        """Stop the session's backend (waiting for a wake under way), then forget it.

        Its events stay in the store. Raises `KeyError` for an unknown session.
        """
        session = self.sessions[session_id]
        while session.state in (State.WAKING, State.AWAKE, State.STOPPING):
            wake, stop = self._wakes.get(session_id), self._stops.get(session_id)
            if session.state is State.AWAKE:
                await self.sleep(session_id, reason)
            elif wake is not None or stop is not None:
                task = wake.task if wake is not None else stop
                assert task is not None
                await asyncio.gather(asyncio.shield(task), return_exceptions=True)
            else:
                await asyncio.sleep(0.05)  # a transient state without a task: look again
        del self.sessions[session_id]  # no await since the loop: nothing woke it meanwhile
        self.recorder.delete(session_id)
        log.info("%s: removed", session_id)
        if self._shared is not None:
            self._shared.announce({"kind": "removed", "session": session_id})

    # -- sleep ----------------------------------------------------------------

    async def sleep(self, session_id: str, reason: str) -> bool:
        """Stop an AWAKE session's backend and wait for it. False if it was not AWAKE."""
        task = self.begin_sleep(session_id, reason)
        if task is None:
            return False
        await asyncio.shield(task)
        return True

    def begin_sleep(self, session_id: str, reason: str) -> asyncio.Task[None] | None:
        """Move an AWAKE session to STOPPING now and stop its backend in a task.

        The move happens before returning, so no request can be forwarded to the
        backend after the decision: it is held and wakes the session again.
        """
        session = self.sessions[session_id]
        if session.state is not State.AWAKE or session_id in self._stops:
            return None
        if self._shared is None:
            self._move(session, State.STOPPING, reason)
            sleeping = self._finish_sleep(session, reason)
        else:  # the lease first: no other replica wakes or sleeps it meanwhile
            sleeping = self._shared_sleep(session, reason)
        task = asyncio.create_task(sleeping, name=f"sleep {session_id}")
        self._stops[session_id] = task
        return task

    async def _shared_sleep(self, session: Session, reason: str) -> None:
        shared = self._shared
        assert shared is not None
        try:
            done, _, _ = await shared.move(
                session, State.AWAKE, State.STOPPING, reason, take_lease=True
            )
        except Exception as exc:
            self._stops.pop(session.id, None)
            log.warning("%s: not put to sleep: Redis does not answer (%s)", session.id, exc)
            self._notify(session, State.AWAKE)  # still awake: its checks go on
            return
        if not done:  # another replica moved it meanwhile
            self._stops.pop(session.id, None)
            await self._catch_up(session)
            return
        self._move(session, State.STOPPING, reason)
        await self._finish_sleep(session, reason)

    async def _finish_sleep(self, session: Session, reason: str) -> None:
        try:
            await self._stop_backend(session, retry=True)
        finally:
            session.endpoint = session.pid = session.pid_started = None
            session.awake_since = None
            self._move(session, State.ASLEEP, reason)
            self._stops.pop(session.id, None)
            self._spawn(self._shared_move(session, State.STOPPING, State.ASLEEP, reason, True))

    async def _stop_backend(self, session: Session, *, retry: bool = False) -> None:
        """Stop the backend of `session`. A failing stop is logged and, with `retry`,
        tried again with backoff until it works: the session stays STOPPING meanwhile,
        which is the truth, and the stop is never taken for done."""
        grace = self._templates[session.template].stop_grace
        delay = 0.1
        while True:
            try:
                await self._provider.stop(session.id, grace)
                return
            except Exception as exc:
                self.health.task_failed("stop")
                log.error("%s: stopping the backend failed: %s", session.id, _why(exc))
                if not retry or not self._provider.alive(session.id):
                    return
            await asyncio.sleep(delay)
            delay = min(STOP_RETRY_MAX, delay * 2)

    def _backend_exited(self, session_id: str, reason: str) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.state is not State.AWAKE:
            return  # a waking backend's death is seen by the readiness poll
        session.endpoint = session.pid = session.pid_started = None
        session.awake_since = None
        if self._shared is None:
            self._move(session, State.ASLEEP, reason)
            return
        session.state = State.ASLEEP  # the truth here at once; recorded by one replica only
        self._notify(session, State.AWAKE)
        self._spawn(self._exit_seen(session, reason))

    async def _exit_seen(self, session: Session, reason: str) -> None:
        """Every replica that watched the backend saw it exit: the one whose move lands
        in Redis first records it (or each, while Redis is down: the truth is kept)."""
        if await self._shared_move(session, State.AWAKE, State.ASLEEP, reason):
            self._record(session, State.AWAKE, reason)

    # -- records --------------------------------------------------------------

    def _move(
        self, session: Session, new: State, reason: str, wake_seconds: float | None = None
    ) -> None:
        old = session.state
        check_transition(old, new)
        session.state = new
        self._record(session, old, reason, wake_seconds)
        self._notify(session, old)

    def _record(
        self, session: Session, old: State, reason: str, wake_seconds: float | None = None
    ) -> None:
        event = Transition(session.id, self._clock.time(), old, session.state, reason, wake_seconds)
        self._save(session, event)
        took = "" if wake_seconds is None else f" in {wake_seconds:.2f}s"
        log.info(
            "%s: %s -> %s%s (%s)",
            session.id,
            old,
            session.state,
            took,
            reason,
            extra=fields(
                session=session.id,
                state=session.state.value,
                old_state=old.value,
                reason=reason,
                duration=wake_seconds,
            ),
        )
        for observer in self.observers:
            try:
                observer(event)
            except Exception:  # an observer's bug never breaks a transition
                log.exception("an event observer failed")

    def _save(self, session: Session, event: Transition | None = None) -> None:
        """Hand the session's record (and the event) to the write-behind queue."""
        self.recorder.record(SessionRecord.of(session, self._clock.time()), event)

    def _notify(self, session: Session, old: State) -> None:
        if session.state is State.AWAKE:
            self.awake.add(session.id)
        else:
            self.awake.discard(session.id)
        if session.state in RUNNING:
            self.running.add(session.id)
        elif session.id not in self._wakes:  # a wake begun keeps its place until it ends
            self.running.discard(session.id)
        for listener in self.listeners:
            try:
                listener(session, old, session.state)
            except Exception:  # a listener's bug never breaks a transition
                log.exception("a transition listener failed")

    # -- replicas (a Redis store): the others' moves, mirrored here -----------------

    def share(self, replicas: Replicas) -> None:
        """Coordinate with the other replicas through `replicas` (before `start`)."""
        self._shared = replicas
        replicas.on_move = self.apply_remote
        replicas.on_message = self._on_message
        replicas.on_reconnect = lambda: self._spawn(self.resync())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.health.task_failed("replicas")
            log.error("a replica task failed", exc_info=task.exception())

    async def _shared_move(
        self, session: Session, expect: State, new: State, reason: str, release: bool = False
    ) -> bool:
        """Record a move in Redis if it is still ours to make (see `Replicas.move`). True
        alone, and True while Redis does not answer (what happened here is kept, and
        written when it is back); False when another replica's move came first."""
        shared = self._shared
        if shared is None:
            return True
        for attempt in range(CLAIM_TRIES):
            try:
                done, state, fence = await shared.move(
                    session, expect, new, reason, release=release
                )
            except Exception as exc:  # a timeout may hide a move made: ask again
                if attempt + 1 < CLAIM_TRIES:
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                log.warning(
                    "%s: %s -> %s not told to the replicas: %s", session.id, expect, new, exc
                )
                return True
            return done or (state is new and fence == session.fence)  # ours, made before
        return True

    def _keep_lease(self, session: Session) -> asyncio.Task[None] | None:
        """Renew our wake lease while the backend starts. A lease found lost is not acted
        on here: the move to AWAKE then fails, and `_lost_lease` sorts it out."""
        shared = self._shared
        if shared is None:
            return None
        fence = session.fence

        async def renew() -> None:
            while True:
                await asyncio.sleep(shared.beat_every)
                try:
                    if not await shared.renew(session.id, fence):
                        log.warning(
                            "%s: the wake lease was lost (this replica stalled)", session.id
                        )
                        return
                except Exception as exc:  # Redis away: nobody can take the wake over either
                    log.debug("%s: lease not renewed: %s", session.id, exc)

        return asyncio.create_task(renew(), name=f"lease {session.id}")

    async def _claim(self, session: Session, reason: str) -> tuple[bool, RunningBackend | None]:
        """Take the wake lease, or wait for the replica that holds it.

        (True, left) once the lease is ours and the session WAKING here: `left` is the
        backend an interrupted wake may have left running. (False, None) when the session
        became AWAKE through another replica meanwhile.
        """
        shared = self._shared
        assert shared is not None
        deadline = self._clock.monotonic() + self._start_timeout
        while True:
            try:
                claim = await self._try_claim(shared, session, reason)
            except Exception as exc:
                raise WakeError(
                    f"session {session.id!r} cannot be woken safely now: the replicas' Redis"
                    f" does not answer ({_why(exc)})",
                    retry_after=5.0,
                ) from exc
            if claim.outcome == "granted":
                return True, self._claimed(session, claim.fence, claim.prior, reason, claim)
            if claim.outcome == "awake":
                backend = RunningBackend(session.id, claim.endpoint or UNKNOWN_ENDPOINT)
                backend = replace(backend, pid=claim.pid, pid_started=claim.pid_started)
                if await self._follow(session, claim.fence, backend):
                    return False, None
                self._unreachable[session.id] = claim.fence
                continue
            if self._clock.monotonic() > deadline:
                raise WakeError(f"session {session.id!r}: another replica's wake is stuck")
            await self._another_move(session.id, claim.wait + 0.05)
            if session.state is State.AWAKE:
                return False, None

    async def _try_claim(self, shared: Replicas, session: Session, reason: str) -> Any:
        """`Replicas.claim`, tried `CLAIM_TRIES` times: a timeout under load is not an
        outage. A Redis that refuses connections fails at once."""
        for attempt in range(CLAIM_TRIES):
            try:
                return await shared.claim(
                    session.id, reason, self._unreachable.get(session.id), session.fence
                )
            except ConnectionRefusedError:
                raise
            except Exception as exc:
                if attempt + 1 == CLAIM_TRIES or "refused" in str(exc).lower():
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def _claimed(
        self, session: Session, fence: int, prior: State, reason: str, claim: Any
    ) -> RunningBackend | None:
        old = session.state
        session.fence = fence
        self._unreachable.pop(session.id, None)
        session.state = State.WAKING
        self._record(session, old, reason)
        self._notify(session, old)
        if prior in (State.ASLEEP, State.FAILED):
            return None
        endpoint = claim.endpoint or UNKNOWN_ENDPOINT
        return RunningBackend(session.id, endpoint, claim.pid, claim.pid_started)

    async def _follow(self, session: Session, fence: int, backend: RunningBackend) -> bool:
        """Use the awake backend of another replica, if the provider can adopt it."""
        if backend.endpoint == UNKNOWN_ENDPOINT:
            return False
        try:
            found = await self._provider.adopt([backend])
        except Exception as exc:
            log.warning("%s: adopting the backend of another replica failed: %s", session.id, exc)
            found = []
        if not found:
            log.info("%s: the backend awake on another replica cannot be adopted", session.id)
            return False
        old = session.state
        session.fence = max(session.fence, fence)
        self._set_backend(session, found[0])
        session.state = State.AWAKE
        self._mark_awake_now(session)
        self._notify(session, old)
        self._moved(session.id)
        return True

    async def _lost_lease(self, session: Session) -> bool:
        """Our wake lease expired before the backend was ready, and another replica took
        the wake over. It may have adopted our backend: then it is the session's, and
        the wake succeeded after all (True). Otherwise ours is stopped (False)."""
        shared = self._shared
        assert shared is not None
        ours = session.pid
        deadline = self._clock.monotonic() + 2 * shared.lease_ttl
        record = None
        while self._clock.monotonic() < deadline:
            try:
                record = await shared.store.record(session.id)
            except Exception as exc:
                log.warning("%s: could not read its state from Redis: %s", session.id, exc)
            if record is not None and record.state in (State.AWAKE, State.ASLEEP, State.FAILED):
                break
            await self._another_move(session.id, 0.5)
        if record is not None and record.state is State.AWAKE and record.pid == ours:
            session.fence = record.fence
            return True
        await self._stop_backend(session)
        session.endpoint = session.pid = session.pid_started = None
        self._move(session, State.ASLEEP, "wake taken over by another replica")
        if record is not None:
            await self._mirror(session, record)
        return False

    async def _catch_up(self, session: Session) -> None:
        """Read the session's state from Redis and mirror it."""
        shared = self._shared
        if shared is None:
            return
        try:
            record = await shared.store.record(session.id)
        except Exception as exc:
            log.warning("%s: could not read its state from Redis: %s", session.id, exc)
            return
        if record is not None:
            await self._mirror(session, record)

    async def _mirror(self, session: Session, record: SessionRecord) -> None:
        if record.state is State.AWAKE and record.endpoint is not None:
            backend = RunningBackend(session.id, record.endpoint, record.pid, record.pid_started)
            if not await self._follow(session, record.fence, backend):
                self._unreachable[session.id] = record.fence
            return
        self._apply(session, record.state, record.fence)

    def apply_remote(self, moved: Moved) -> None:
        """Another replica's move, as published: this replica's copy follows it, and its
        listeners fire (the gateway forwards, KEDA streams push). Nothing is recorded:
        the replica that moved recorded it. An older move (lower fence) is ignored."""
        session = self.sessions.get(moved.session)
        if session is None or moved.fence < session.fence:
            return
        if (
            moved.new is State.AWAKE
            and moved.fence > session.fence
            and session.state is State.AWAKE
            and session.pid not in (None, moved.pid)
        ):  # woken again elsewhere, with another backend: ours (unreachable there) goes
            self._spawn(self._stop_backend(session))
        if session.id in self._wakes or session.id in self._stops:
            self._moved(session.id)  # our own wake or sleep finds out by its lease
            return
        if moved.new is State.AWAKE:
            endpoint = moved.endpoint or UNKNOWN_ENDPOINT
            backend = RunningBackend(session.id, endpoint, moved.pid, moved.pid_started)
            self._spawn(self._follow_or_forget(session, moved.fence, backend))
            return
        self._apply(session, moved.new, moved.fence)

    async def _follow_or_forget(
        self, session: Session, fence: int, backend: RunningBackend
    ) -> None:
        if not await self._follow(session, fence, backend) and session.fence <= fence:
            self._unreachable[session.id] = fence
            self._apply(session, State.ASLEEP, fence)  # treated as asleep here

    def _apply(self, session: Session, state: State, fence: int) -> None:
        old = session.state
        session.fence = max(session.fence, fence)
        if state is not State.AWAKE and state is not State.STOPPING:
            session.endpoint = session.pid = session.pid_started = None
            session.awake_since = None
        session.state = state
        if old is not state:
            self._notify(session, old)
        self._moved(session.id)

    def _moved(self, session_id: str) -> None:
        changed = self._changed.pop(session_id, None)
        if changed is not None:
            changed.set()

    async def _another_move(self, session_id: str, timeout: float) -> None:
        """Wait for another replica's next move of `session_id`, at most `timeout` s."""
        changed = self._changed.setdefault(session_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    def _on_message(self, message: dict[str, Any]) -> None:
        """Sessions added or removed through another replica's admin API."""
        sid, kind = str(message["session"]), message["kind"]
        if kind == "added" and sid not in self.sessions and message["template"] in self._templates:
            session = Session(sid, str(message["template"]), dict(message.get("labels", {})))
            session.created = float(message.get("created", 0.0))
            self.sessions[sid] = session
        elif kind == "removed" and sid in self.sessions and sid not in self._wakes:
            session = self.sessions.pop(sid)
            self.awake.discard(sid)
            session.state, old = State.ASLEEP, session.state
            if old is not State.ASLEEP:
                self._notify(session, old)

    async def resync(self) -> None:
        """Mirror every session as Redis has it (after a reconnect: moves may have been
        missed). Sessions with a wake or sleep under way here are left to it."""
        shared = self._shared
        if shared is None:
            return
        try:
            records = await shared.store.sessions()
        except Exception as exc:
            log.warning("resync with the other replicas failed: %s", exc)
            return
        for record in records:
            session = self.sessions.get(record.id)
            if session is None:
                if record.template in self._templates:
                    self._on_message(
                        {"kind": "added", "session": record.id, "template": record.template,
                         "labels": record.labels, "created": record.created}
                    )  # fmt: skip
                continue
            busy = session.id in self._wakes or session.id in self._stops
            if busy or record.fence < session.fence:
                continue
            if record.state is not session.state or record.fence > session.fence:
                await self._mirror(session, record)

    async def settle_interrupted(self) -> None:
        """On the controller's replica, every lease ttl: the sessions a replica left WAKING
        or STOPPING when it died, that no request took over (no lease at two looks in a
        row), are put to sleep here (their backend stopped where this replica can adopt
        it), so none stays half-way with a backend running for nobody. A request
        meanwhile waits for it, then wakes."""
        shared = self._shared
        if shared is None:
            return
        found = set(await shared.unsettled())
        # only those found twice in a row: a replica whose loop stalled past its lease
        # renews it as soon as it runs again, and finishes its own wake
        due, self._unsettled = found & self._unsettled, found
        for sid in sorted(due):
            session = self.sessions.get(sid)
            if session is None or sid in self._wakes or sid in self._stops:
                continue
            task = asyncio.create_task(self._settle(session), name=f"settle {sid}")
            self._stops[sid] = task
            task.add_done_callback(functools.partial(self._settled, sid))

    def _settled(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._stops.get(session_id) is task:
            del self._stops[session_id]
        if not task.cancelled() and task.exception() is not None:
            self.health.task_failed("replicas")
            log.error(
                "%s: settling an interrupted wake failed", session_id, exc_info=task.exception()
            )

    async def _settle(self, session: Session) -> None:
        shared = self._shared
        assert shared is not None
        reason = "a wake or sleep cut short by a replica's end, settled"
        try:
            claim = await self._try_claim(shared, session, reason)
        except Exception as exc:
            log.warning("%s: an interrupted wake is not settled now: %s", session.id, exc)
            return
        if claim.outcome != "granted":
            return  # another replica took it over meanwhile
        left = self._claimed(session, claim.fence, claim.prior, reason, claim)
        if left is not None:
            try:
                found = await self._provider.adopt([left])
            except Exception as exc:
                log.warning("%s: adopting the backend left running failed: %s", session.id, exc)
                found = []
            if found:
                self._set_backend(session, found[0])
                await self._stop_backend(session, retry=True)
        session.endpoint = session.pid = session.pid_started = None
        session.awake_since = None
        self._move(session, State.ASLEEP, reason)
        await self._shared_move(session, State.WAKING, State.ASLEEP, reason, release=True)

    async def _hand_over(self) -> bool:
        """At shutdown: True if other replicas are alive, which keep the backends."""
        shared = self._shared
        assert shared is not None
        try:
            await shared.leave()
            await asyncio.sleep(shared.beat_every)  # a replica alive beats meanwhile
            others = await shared.others_alive()
        except Exception as exc:
            log.warning("shutdown: Redis does not answer (%s): stopping our backends", exc)
            return False
        if others:
            log.info("shutdown: backends left to the replicas %s", ", ".join(sorted(others)))
        return bool(others)

    async def _stop_at_shutdown(self, session: Session) -> None:
        """The last replica stops a backend, whatever Redis does."""
        await self._stop_backend(session)
        session.endpoint = session.pid = session.pid_started = None
        session.awake_since = None
        old, session.state = session.state, State.ASLEEP
        self._notify(session, old)
        reason = "siesta shut down"
        if await self._shared_move(session, old, State.ASLEEP, reason):
            self._record(session, old, reason)


async def _first_of(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Until the first of `tasks` ends, `timeout` seconds at most (they go on)."""
    if tasks:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    else:
        await asyncio.sleep(timeout)


def _why(exc: BaseException) -> str:
    """A short text for `exc`: its message, or its type when it has none."""
    return str(exc) or type(exc).__name__
