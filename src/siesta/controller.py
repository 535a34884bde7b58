"""Timers that put inactive sessions to sleep, by their policy.

Each awake session has one next-due time in a heap; the controller wakes up at
the earliest, evaluates only the sessions that are due (`core.policy.Policy`) and
asks the lifecycle to put them to sleep. Sleeping sessions are not in the heap at
all, so they cost nothing. Activity does not touch the heap: a session that was
busy is simply re-scheduled when its check comes. When open connections or
requests in flight are what keeps a session awake, the controller sets
`Activity.watch` and the gateway calls it when they fall, once: the session is
checked at once, and not polled meanwhile. Probe results ask for a check too
(`check_soon`). A policy with `warn` announces a foreseen sleep `warn_before`
ahead, once per awake period, by webhook or command.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from siesta.core.clock import Clock, SystemClock
from siesta.core.model import Session, State
from siesta.core.policy import Decision, EvaluationError, Policy, Signals, Warn
from siesta.httpclient import async_client
from siesta.lifecycle import Lifecycle
from siesta.providers.base import BackendStatus, Provider
from siesta.signals import RateWindow, read_signals

log = logging.getLogger("siesta.controller")

WEBHOOK_TIMEOUT = 5.0  # seconds a warning webhook gets to answer
COMMAND_TIMEOUT = 30.0  # seconds a warning command gets to finish before it is killed
MIN_DELAY = 0.001  # seconds: a check is never re-scheduled for now, which would spin
RATE_SIGNALS = frozenset({"requests_1m", "bytes_1m"})


class Controller:
    """Schedules and runs the policy checks of awake sessions.

    `policies` maps template names to their policy (`Config.template_policies()`);
    `provider` answers cpu and memory for policies that read them. `app_signals`
    holds each session's `app` map, for an activity probe to fill (`siesta.probes`),
    which also counts its failures in `probe_failures`.
    `evaluation_errors` counts checks whose rules failed to run (the session was
    kept awake and checked again later); `warnings_sent` counts warnings started.
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        policies: Mapping[str, Policy],
        *,
        provider: Provider | None = None,
        clock: Clock | None = None,
    ):
        self._lifecycle = lifecycle
        self._policies = policies
        self._provider = provider
        self._clock = clock or SystemClock()
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._rates: dict[str, RateWindow] = {}
        self._warned: set[str] = set()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Future[None]] = set()
        self.app_signals: dict[str, Mapping[str, Any]] = {}
        self.evaluation_errors = 0
        self.warnings_sent = 0
        self.probe_failures = 0
        lifecycle.listeners.append(self._on_transition)
        for session in lifecycle.sessions.values():
            if session.state is State.AWAKE:
                self._on_awake(session)

    def next_due(self, session_id: str) -> float | None:
        """When `session_id` is next checked (monotonic); None when it is not awake, or
        when only a fall of its connections or requests in flight will bring a check."""
        due = self._due.get(session_id)
        return None if due is None or due == math.inf else due

    def watching(self, session_id: str) -> bool:
        """Whether the gateway is to tell when the session's connections or requests fall."""
        session = self._lifecycle.get(session_id)
        return session is not None and session.activity.watch is not None

    def policy_of(self, session: Session) -> Policy:
        """The policy that decides when `session` sleeps."""
        return self._policies[session.template]

    def check_soon(self, session_id: str) -> None:
        """Check an awake session now, e.g. because a signal of its changed."""
        due = self._due.get(session_id)
        now = self._clock.monotonic()
        if due is not None and due > now:
            self._schedule(session_id, now)

    async def current_signals(self, session_id: str) -> Signals | None:
        """What a check of `session_id` would read now; None unless it is awake.

        For `siesta policy explain`: cpu and memory are asked of the provider when
        the policy reads them, as a check does. Nothing is scheduled or decided.
        """
        session = self._lifecycle.get(session_id)
        if session is None or session.state is not State.AWAKE:
            return None
        policy = self.policy_of(session)
        statuses = await self._statuses([session_id]) if policy.needs_provider else {}
        if session.state is not State.AWAKE:
            return None  # put to sleep while the provider answered
        now = self._clock.monotonic()
        return self._signals(session, policy, now, statuses.get(session_id))

    # -- scheduling -----------------------------------------------------------

    def _on_transition(self, session: Session, old: State, new: State) -> None:
        if new is State.AWAKE:
            self._on_awake(session)
        elif old is State.AWAKE:
            self._due.pop(session.id, None)
            self._rates.pop(session.id, None)
            self._warned.discard(session.id)
            session.activity.watch = None

    def _on_awake(self, session: Session) -> None:
        now = self._clock.monotonic()
        activity = session.activity
        if self.policy_of(session).variables & RATE_SIGNALS:  # a deque each: only if read
            self._rates[session.id] = RateWindow(now, activity.requests, activity.bytes)
        self._warned.discard(session.id)
        self._first_check(session, now)

    def _first_check(self, session: Session, now: float) -> None:
        """Schedule a session that just woke: by its policy's answer, else at once."""
        policy = self.policy_of(session)
        if policy.needs_provider:
            self._schedule(session.id, now)  # the check fetches cpu and memory
            return
        try:
            decision = policy.evaluate(self._signals(session, policy, now, None))
        except EvaluationError:
            self._schedule(session.id, now)  # counted and logged by the check
            return
        if decision.sleep:
            self._schedule(session.id, now)
            return
        self._watch(session, decision.watch)
        self._schedule(session.id, max(now, self._next_check(session.id, policy, decision, now)))

    def _watch(self, session: Session, wanted: bool) -> None:
        """Ask the gateway to say when the session's connections or requests fall (or not)."""
        activity = session.activity
        if not wanted:
            activity.watch = None
        elif activity.watch is None:
            activity.watch = partial(self.check_soon, session.id)

    def _schedule(self, session_id: str, at: float) -> None:
        self._due[session_id] = at
        if at == math.inf:
            return  # checked when its traffic falls (`_watch`), not on a timer
        heapq.heappush(self._heap, (at, session_id))
        if self._heap[0][1] == session_id:
            self._changed.set()

    # -- checks ---------------------------------------------------------------

    async def tick(self) -> list[str]:
        """Evaluate every session due by now; start the sleeps; return who was put to sleep."""
        now = self._clock.monotonic()
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            at, sid = heapq.heappop(self._heap)
            if self._due.get(sid) == at:
                del self._due[sid]
                due.append(sid)
        statuses = await self._statuses(due)
        return [sid for sid in due if self._check_guarded(sid, now, statuses.get(sid))]

    def _check_guarded(self, sid: str, now: float, status: BackendStatus | None) -> bool:
        """`_check`, but a bug in one session's check never stops the controller: it is
        logged, counted as an evaluation error, and the session is looked at again later."""
        try:
            return self._check(sid, now, status)
        except Exception:
            self.evaluation_errors += 1
            log.exception("%s: checking the policy failed; kept awake", sid)
            session = self._lifecycle.get(sid)
            if session is not None and session.state is State.AWAKE:
                self._schedule(sid, now + self.policy_of(session).check_every)
            return False

    async def _statuses(self, due: list[str]) -> dict[str, BackendStatus]:
        """The provider's status of the due sessions whose policy reads cpu or memory."""
        provider = self._provider
        if provider is None:
            return {}
        wanted = [sid for sid in due if self._needs_provider(sid)]
        if not wanted:
            return {}
        answers = await asyncio.gather(
            *(provider.status(sid) for sid in wanted), return_exceptions=True
        )
        statuses: dict[str, BackendStatus] = {}
        for sid, answer in zip(wanted, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("%s: no status from the provider: %s", sid, answer)
            else:
                statuses[sid] = answer
        return statuses

    def _needs_provider(self, sid: str) -> bool:
        session = self._lifecycle.get(sid)
        return session is not None and self.policy_of(session).needs_provider

    def _check(self, sid: str, now: float, status: BackendStatus | None) -> bool:
        session = self._lifecycle.get(sid)
        if session is None or session.state is not State.AWAKE:
            return False
        policy = self.policy_of(session)
        try:
            decision = policy.evaluate(self._signals(session, policy, now, status))
        except EvaluationError as exc:
            self.evaluation_errors += 1
            log.warning("%s: policy %s failed, kept awake: %s", sid, policy.name, exc)
            self._schedule(sid, now + policy.check_every)
            return False
        self._maybe_warn(session, policy, decision, now)
        if not decision.sleep:
            self._watch(session, decision.watch)
            self._schedule(sid, max(now + MIN_DELAY, self._next_check(sid, policy, decision, now)))
            return False
        task = self._lifecycle.begin_sleep(sid, decision.reason)
        if task is None:
            return False
        self._track(task)
        return True

    def _signals(
        self, session: Session, policy: Policy, now: float, status: BackendStatus | None
    ) -> Signals:
        rates = (0, 0)
        window = self._rates.get(session.id)
        if window is not None and policy.variables & RATE_SIGNALS:
            rates = window.sample(now, session.activity.requests, session.activity.bytes)
        return read_signals(
            session,
            monotonic=now,
            wall=self._clock.time(),
            rates=rates,
            status=status,
            app=self.app_signals.get(session.id),
        )

    def _next_check(self, sid: str, policy: Policy, decision: Decision, now: float) -> float:
        at = decision.next_check
        warn, sleep_at = policy.warn, decision.sleep_at
        if warn is not None and sleep_at is not None and sid not in self._warned:
            at = min(at, sleep_at - warn.before)
        return at

    # -- warnings -------------------------------------------------------------

    def _maybe_warn(self, session: Session, policy: Policy, decision: Decision, now: float) -> None:
        """Announce a sleep foreseen within `warn_before`, once per awake period."""
        warn, sleep_at = policy.warn, decision.sleep_at
        if warn is None or sleep_at is None or session.id in self._warned:
            return
        if sleep_at - now > warn.before:
            return
        self._warned.add(session.id)
        self.warnings_sent += 1
        wall = self._clock.time() + (sleep_at - now)
        payload = {
            "session": session.id,
            "policy": policy.name,
            "sleep_at": datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds"),
            "reason": _coming(decision),
        }
        log.info("%s: warning of a sleep at %s (%s)", session.id, payload["sleep_at"], policy.name)
        self._track(asyncio.ensure_future(_send_warning(warn, payload)))

    def _track(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a controller task failed", exc_info=task.exception())

    # -- running --------------------------------------------------------------

    async def run(self) -> None:
        """Run the timers until cancelled."""
        while True:
            await self.tick()
            delay = self._heap[0][0] - self._clock.monotonic() if self._heap else 3600.0
            self._changed.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)

    async def close(self) -> None:
        """Wait for sleeps and warnings under way."""
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _coming(decision: Decision) -> str:
    """Why the session will sleep: the decision's reason when it is now, else the rule."""
    return decision.reason if decision.sleep else f"foreseen by the policy ({decision.reason})"


async def _send_warning(warn: Warn, payload: dict[str, str]) -> None:
    """Deliver one warning; failures are logged, never raised."""
    try:
        if warn.webhook is not None:
            await _post_json(warn.webhook, payload)
        elif warn.command:
            await _run_command(warn.command, payload)
    except Exception as exc:
        log.warning("%s: the sleep warning failed: %s", payload["session"], exc)


async def _post_json(url: str, payload: dict[str, str]) -> None:
    """POST `payload` as JSON; an error status or no answer raises (`httpx.HTTPError`)."""
    async with async_client(WEBHOOK_TIMEOUT, trust_env=True) as client:
        response = await client.post(url, json=payload)
        response.raise_for_status()


async def _run_command(command: tuple[str, ...], payload: dict[str, str]) -> None:
    env = {
        **os.environ,
        "SIESTA_SESSION": payload["session"],
        "SIESTA_POLICY": payload["policy"],
        "SIESTA_SLEEP_AT": payload["sleep_at"],
        "SIESTA_REASON": payload["reason"],
    }
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        code = await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{command[0]} did not finish within {COMMAND_TIMEOUT:g}s") from None
    if code != 0:
        raise RuntimeError(f"{command[0]} exited with status {code}")
