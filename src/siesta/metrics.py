"""Prometheus metrics of a running siesta, on a registry of its own.

Used by the admin API (`GET /metrics`). Transitions, which are rare, update
counters through a lifecycle observer; what the hot path changes (requests,
bytes, held requests, connections) is read from the live state at scrape time,
so the gateway does no extra work per request.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from siesta import __version__
from siesta.core.model import Session, State, Transition
from siesta.ledger import RUNNING
from siesta.lifecycle import Lifecycle

# No *_created twin of every counter: siesta's start time is process_start_time_seconds.
disable_created_metrics()  # type: ignore[no-untyped-call]

SLEEP_REASONS = ("idle", "policy", "backend_exit", "shutdown", "admin", "evicted")
"""The `reason` label of `siesta_sleeps_total`: a short class, never the free text."""

WAKE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
"""Seconds: from a small app's sub-second start to a slow one near the 60s wake timeout."""


def build_info() -> dict[str, str]:
    """The labels of siesta_build_info: version, Python, and which hot path runs."""
    from siesta._native import compiled

    return {
        "version": __version__,
        "python": platform.python_version(),
        "hot_path": "compiled" if compiled() else "pure",
    }


def sleep_reason_class(reason: str) -> str:
    """The class (one of `SLEEP_REASONS`) of a sleep event's reason text.

    Matched on how each writer starts or ends its reasons, never on words a policy's
    own text could hold: whatever is not recognised is a policy's decision.
    """
    if reason.startswith(("idle_timeout", "idle for")):
        return "idle"
    if reason.startswith(("backend exited", "backend killed")) or "backend ended" in reason:
        return "backend_exit"
    if reason == "siesta shut down":
        return "shutdown"
    if reason.endswith("through the admin API") or reason == "session removed":
        return "admin"
    if reason.startswith("evicted: "):  # gateway.max_awake made room for another wake
        return "evicted"
    return "policy"


class SiestaMetrics:
    """The registry behind `/metrics`, fed by the lifecycle and read from live state.

    `held` returns how many requests the gateway holds now; `controller` returns the
    controller (or None), read for `evaluation_errors` and `probe_failures` if it has them.
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        held: Callable[[], int],
        controller: Callable[[], object | None],
    ):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds...
        PlatformCollector(registry=self.registry)  # python_info
        Info("siesta_build", "The siesta that runs.", registry=self.registry).info(build_info())
        self._lifecycle = lifecycle
        self._held = held
        self._controller = controller
        self._running_since: dict[str, float] = {}  # wall clock each running backend began
        self._ran = 0.0  # seconds of backends that have stopped
        self._retired_requests = 0  # of sessions removed since start-up
        self._retired_bytes = 0
        self.wakes = Counter(
            "siesta_wakes", "Sessions woken (WAKING -> AWAKE).", registry=self.registry
        )
        self.wake_failures = Counter(
            "siesta_wake_failures", "Wakes that failed to start a backend.", registry=self.registry
        )
        self.sleeps = Counter(
            "siesta_sleeps",
            "Sessions put to sleep or whose backend stopped, by reason class.",
            ["reason"],
            registry=self.registry,
        )
        for reason in SLEEP_REASONS:
            self.sleeps.labels(reason)  # every class is exported, at 0 until it happens
        self.wake_duration = Histogram(
            "siesta_wake_duration_seconds",
            "Seconds from the wake decision to the backend answering its readiness check.",
            buckets=WAKE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveState(self))
        lifecycle.observers.append(self.observe)

    def observe(self, event: Transition) -> None:
        """Count one transition (a lifecycle observer)."""
        old, new = event.old, event.new
        if old is State.WAKING and new is State.AWAKE:
            self.wakes.inc()
            if event.wake_seconds is not None:
                self.wake_duration.observe(event.wake_seconds)
        elif old is State.WAKING and event.reason.startswith("start failed"):
            self.wake_failures.inc()
        if old is State.AWAKE and new in (State.STOPPING, State.ASLEEP):
            self.sleeps.labels(sleep_reason_class(event.reason)).inc()
        if new in RUNNING:  # also AWAKE -> AWAKE: a backend re-adopted after a restart
            self._running_since.setdefault(event.session, event.at)
        else:
            began = self._running_since.pop(event.session, None)
            if began is not None:
                self._ran += max(0.0, event.at - began)

    def retire(self, session: Session) -> None:
        """Keep a removed session's traffic in the totals (counters never go down)."""
        self._retired_requests += session.activity.requests
        self._retired_bytes += session.activity.bytes

    def awake_seconds(self, now: float) -> float:
        """Seconds backends have run (waking, awake or stopping) since siesta started."""
        running = sum(max(0.0, now - began) for began in self._running_since.values())
        return self._ran + running

    def collect_live(self) -> Iterable[Metric]:
        """The metrics read from live state (called at scrape time)."""
        sessions = list(self._lifecycle.sessions.values())
        by_state = GaugeMetricFamily("siesta_sessions", "Sessions by state.", labels=["state"])
        counts = dict.fromkeys(State, 0)
        requests, nbytes, connections, inflight = (
            self._retired_requests,
            self._retired_bytes,
            0,
            0,
        )
        for session in sessions:
            counts[session.state] += 1
            activity = session.activity
            requests += activity.requests
            nbytes += activity.bytes
            connections += activity.connections
            inflight += activity.inflight
        for state, count in counts.items():
            by_state.add_metric([state.value], count)
        yield by_state
        yield GaugeMetricFamily(
            "siesta_held_requests",
            "Requests held at the gateway while their session wakes.",
            value=self._held(),
        )
        yield GaugeMetricFamily(
            "siesta_connections", "Client connections bound to a session.", value=connections
        )
        yield GaugeMetricFamily(
            "siesta_inflight_requests", "Requests forwarded and not yet answered.", value=inflight
        )
        yield CounterMetricFamily(
            "siesta_requests", "Requests forwarded to session backends.", value=requests
        )
        yield CounterMetricFamily(
            "siesta_bytes", "Bytes moved between clients and backends, both ways.", value=nbytes
        )
        yield CounterMetricFamily(
            "siesta_awake_seconds",
            "Seconds session backends have run (waking, awake or stopping), all sessions.",
            value=self.awake_seconds(time.time()),
        )
        yield from self._health_metrics()
        controller = self._controller()
        yield CounterMetricFamily(
            "siesta_policy_evaluation_errors",
            "Policy evaluations that failed (the session is left as it is).",
            value=_count(controller, "evaluation_errors"),
        )
        yield CounterMetricFamily(
            "siesta_probe_failures",
            "Activity probes of session apps that failed.",
            value=_count(controller, "probe_failures"),
        )

    def _health_metrics(self) -> Iterable[Metric]:
        """Each dependency's mode and errors, the store's pending writes, task errors."""
        health = self._lifecycle.health
        degraded = GaugeMetricFamily(
            "siesta_dependency_degraded",
            "1 while a dependency (store, replicas) is degraded, else 0.",
            labels=["dependency"],
        )
        errors = CounterMetricFamily(
            "siesta_dependency_errors",
            "Operations on a dependency that failed (and were retried).",
            labels=["dependency"],
        )
        lost = CounterMetricFamily(
            "siesta_dependency_lost",
            "Times a dependency's data was found gone (a store file deleted or replaced,"
            " a Redis restarted empty) and written again from memory.",
            labels=["dependency"],
        )
        for name, dep in sorted(health.dependencies.items()):
            degraded.add_metric([name], 0 if dep.mode == "ok" else 1)
            errors.add_metric([name], dep.errors)
            lost.add_metric([name], dep.lost)
        yield from (degraded, errors, lost)
        yield GaugeMetricFamily(
            "siesta_store_pending_writes",
            "Records and events handed to the store and not yet durable.",
            value=self._lifecycle.recorder.pending,
        )
        tasks = CounterMetricFamily(
            "siesta_task_errors",
            "Errors of background tasks (each was logged and the task retried).",
            labels=["task"],
        )
        for task, count in sorted(health.task_errors.items()):
            tasks.add_metric([task], count)
        yield tasks


class _LiveState:
    """A collector that reads siesta's live state when Prometheus scrapes."""

    def __init__(self, metrics: SiestaMetrics):
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics.collect_live())

    def describe(self) -> Iterable[Metric]:
        return []  # no names reserved: collect() is only called at scrape time


def _count(owner: object | None, name: str) -> float:
    value: Any = getattr(owner, name, 0)
    return float(value) if isinstance(value, int | float) else 0.0
