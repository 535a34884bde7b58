"""The one owner of session state: wakes (single-flight), sleeps, failures, adoption.

The gateway asks it to wake a session; the controller asks it to put one to
sleep; the provider tells it when a backend died. Every transition it makes is
written to the store with its reason. Nothing else changes `Session.state`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from siesta.core.clock import Clock, SystemClock
from siesta.core.lifecycle import after_failed_start, backoff_delay, check_transition
from siesta.core.model import Session, State, Transition
from siesta.logconfig import fields
from siesta.providers.base import Provider, RunningBackend, StartError
from siesta.readiness import NotReady, http_ready, tcp_ready, wait_ready
from siesta.store.base import SessionRecord, Store

log = logging.getLogger("siesta.lifecycle")

Listener = Callable[[Session, State, State], None]
Observer = Callable[[Transition], None]
"""Called with every event as it is recorded (the admin API's stream, the metrics)."""


class ReadySpec(Protocol):
    """How readiness is checked: an HTTP path, or a TCP connect when `http` is None."""

    @property
    def http(self) -> str | None: ...


class LifecycleTemplate(Protocol):
    """What the lifecycle reads from a template."""

    @property
    def ready(self) -> ReadySpec: ...
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
    ):
        self.sessions: dict[str, Session] = {}
        self.listeners: list[Listener] = []
        self.awake: set[str] = set()  # ids of AWAKE sessions: periodic work visits only these
        self.observers: list[Observer] = []
        self._templates = templates
        self._store = store
        self._provider = provider
        self._start_timeout = start_timeout
        self._clock = clock or SystemClock()
        self._wakes: dict[str, _Wake] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}
        provider.set_exit_handler(self._backend_exited)

    def get(self, session_id: str) -> Session | None:
        """The session called `session_id`, if there is one."""
        return self.sessions.get(session_id)

    # -- start-up and shutdown -------------------------------------------------

    async def start(self, configured: Mapping[str, SessionSpec]) -> None:
        """Register the configured sessions, load the stored ones, re-adopt running backends."""
        now = self._clock.time()
        for sid, spec in configured.items():
            self._store.register(sid, spec.template, dict(spec.labels), now)
        records = [r for r in self._store.sessions() if self._known_template(r)]
        candidates = [
            RunningBackend(r.id, r.endpoint, r.pid, r.pid_started)
            for r in records
            if r.state in (State.WAKING, State.AWAKE, State.STOPPING) and r.endpoint
        ]
        adopted = {b.session for b in await self._provider.adopt(candidates)}
        for record in records:
            await self._restore(record, record.id in adopted)

    def _known_template(self, record: SessionRecord) -> bool:
        if record.template in self._templates:
            return True
        log.warning(
            "session %s: template %r is not configured; skipped", record.id, record.template
        )
        return False

    async def _restore(self, record: SessionRecord, adopted: bool) -> None:
        session = Session(record.id, record.template, dict(record.labels), record.state)
        session.created = record.created
        self.sessions[record.id] = session
        if adopted and record.state is State.AWAKE:
            session.endpoint, session.pid = record.endpoint, record.pid
            session.pid_started = record.pid_started
            self._mark_awake_now(session)
            self._record(session, State.AWAKE, "re-adopted its running backend after a restart")
            self._notify(session, State.ASLEEP)
        elif adopted:
            await self._provider.stop(record.id, self._templates[record.template].stop_grace)
            self._move(session, State.ASLEEP, f"stopped after a restart found it {record.state}")
        elif record.state in (State.WAKING, State.AWAKE, State.STOPPING):
            self._move(session, State.ASLEEP, "its backend ended while siesta was down")

    async def shutdown(self) -> None:
        """Cancel wakes under way and stop every running backend."""
        for wake in list(self._wakes.values()):
            wake.task.cancel()
        await asyncio.gather(*(w.task for w in list(self._wakes.values())), return_exceptions=True)
        awake = [s.id for s in self.sessions.values() if s.state is State.AWAKE]
        await asyncio.gather(*(self.sleep(sid, "siesta shut down") for sid in awake))
        await asyncio.gather(*list(self._stops.values()), return_exceptions=True)
        await self._provider.close()

    # -- wake -----------------------------------------------------------------

    async def wake(self, session_id: str, reason: str) -> Session:
        """Make the session AWAKE; concurrent callers share one start (single-flight).

        Raises `WakeError` when the start fails or the session is in failure backoff.
        """
        session = self.sessions.get(session_id)
        if session is None:
            raise WakeError(f"no session {session_id!r}", retry_after=60.0)
        while session.state is not State.AWAKE:
            if self.sessions.get(session_id) is not session:
                raise WakeError(f"session {session_id!r} was removed", retry_after=60.0)
            stopping = self._stops.get(session_id)
            if stopping is not None:
                await asyncio.shield(stopping)
                continue
            wake = self._wakes.get(session_id) or self._begin_wake(session, reason)
            await asyncio.shield(wake.task)
        return session

    def _begin_wake(self, session: Session, reason: str) -> _Wake:
        now = self._clock.monotonic()
        if session.state is State.FAILED and now < session.retry_at:
            raise WakeError(
                f"session {session.id!r} failed to start {session.failures} times in a row;"
                f" next try in {session.retry_at - now:.0f}s",
                retry_after=session.retry_at - now,
            )
        task = asyncio.create_task(self._run_wake(session, reason), name=f"wake {session.id}")
        wake = _Wake(task, now)
        self._wakes[session.id] = wake
        task.add_done_callback(lambda t: self._wake_done(session.id, wake, t))
        return wake

    def _wake_done(self, session_id: str, wake: _Wake, task: asyncio.Task[None]) -> None:
        if self._wakes.get(session_id) is wake:
            del self._wakes[session_id]
        if not task.cancelled():
            task.exception()  # retrieved here: the callers that awaited it got it too

    async def _run_wake(self, session: Session, reason: str) -> None:
        template = self._templates[session.template]
        began = self._clock.monotonic()
        self._move(session, State.WAKING, reason)
        try:
            backend = await self._provider.start(session.id, session.template)
        except StartError as exc:
            self._start_failed(session, str(exc))
            raise WakeError(f"session {session.id!r} could not start: {exc}") from exc
        session.endpoint, session.pid, session.pid_started = (
            backend.endpoint,
            backend.pid,
            backend.pid_started,
        )
        self._save(session)  # the pid is on disk before we wait: a crash now orphans nothing
        try:
            await wait_ready(
                self._probe(session, template.ready), self._alive(session), self._start_timeout
            )
        except (NotReady, asyncio.CancelledError) as exc:
            await self._provider.stop(session.id, template.stop_grace)
            if isinstance(exc, asyncio.CancelledError):
                self._move(session, State.ASLEEP, "wake cancelled")
                raise
            self._start_failed(session, str(exc))
            raise WakeError(f"session {session.id!r} did not start: {exc}") from exc
        session.failures = 0
        self._mark_awake_now(session)
        self._move(session, State.AWAKE, reason, wake_seconds=self._clock.monotonic() - began)

    def _probe(self, session: Session, ready: ReadySpec) -> Callable[[], asyncio.Future[bool]]:
        endpoint = session.endpoint
        assert endpoint is not None
        path = ready.http
        if path is None:
            return lambda: asyncio.ensure_future(tcp_ready(endpoint))
        return lambda: asyncio.ensure_future(http_ready(endpoint, path))

    def _alive(self, session: Session) -> Callable[[], bool]:
        return lambda: self._provider.alive(session.id)

    def _start_failed(self, session: Session, why: str) -> None:
        template = self._templates[session.template]
        session.failures += 1
        new = after_failed_start(session.failures, template.max_start_failures)
        if new is State.FAILED:
            over = session.failures - template.max_start_failures + 1
            session.retry_at = self._clock.monotonic() + backoff_delay(
                over, template.failure_backoff
            )
        session.endpoint = session.pid = session.pid_started = None
        self._move(session, new, f"start failed ({session.failures} in a row): {why}")

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
        self._store.register(session_id, template, dict(labels), now)
        self._save(session)  # a stale stored row (e.g. of an unconfigured template) is reset
        self.sessions[session_id] = session
        log.info("%s: added (template %s)", session_id, template)
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
        self._store.delete(session_id)
        log.info("%s: removed", session_id)

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
        if session.state is not State.AWAKE:
            return None
        self._move(session, State.STOPPING, reason)
        task = asyncio.create_task(self._finish_sleep(session, reason), name=f"sleep {session_id}")
        self._stops[session_id] = task
        return task

    async def _finish_sleep(self, session: Session, reason: str) -> None:
        try:
            await self._provider.stop(session.id, self._templates[session.template].stop_grace)
        finally:
            session.endpoint = session.pid = session.pid_started = None
            session.awake_since = None
            self._move(session, State.ASLEEP, reason)
            self._stops.pop(session.id, None)

    def _backend_exited(self, session_id: str, reason: str) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.state is not State.AWAKE:
            return  # a waking backend's death is seen by the readiness poll
        session.endpoint = session.pid = session.pid_started = None
        session.awake_since = None
        self._move(session, State.ASLEEP, reason)

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
        record = SessionRecord.of(session, self._clock.time())
        self._store.save(record, event)

    def _notify(self, session: Session, old: State) -> None:
        if session.state is State.AWAKE:
            self.awake.add(session.id)
        else:
            self.awake.discard(session.id)
        for listener in self.listeners:
            listener(session, old, session.state)
