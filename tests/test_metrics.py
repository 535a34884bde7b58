"""Prometheus metrics: reason classes, counting transitions, and /metrics of a real siesta."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from siesta.core.model import Session, State, Transition
from siesta.health import Health
from siesta.metrics import SiestaMetrics, sleep_reason_class

from .admin import client, launch_admin
from .conftest import Launcher

A, W, S, Z, F = State.AWAKE, State.WAKING, State.STOPPING, State.ASLEEP, State.FAILED


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("idle for 15m >= idle_timeout 15m", "idle"),
        ("put to sleep through the admin API", "admin"),
        ("session deleted through the admin API", "admin"),
        ("session removed", "admin"),
        ("siesta shut down", "shutdown"),
        ("backend exited with code 3", "backend_exit"),
        ("backend killed by SIGKILL", "backend_exit"),
        ('idle_timeout: idle_for >= duration("15m") && inflight == 0 [idle_for=15m]', "idle"),
        ('sleep_when: labels.owner == "admin" [labels=...]', "policy"),
        ("its backend ended while siesta was down", "backend_exit"),
        ('sleep_when: idle_for > duration("30m") && cpu_percent < 5.0', "policy"),
        ("max_lifetime 12h reached", "policy"),
    ],
)
def test_sleep_reasons_get_a_short_class(reason: str, expected: str) -> None:
    """The free-text reason of a sleep becomes one of a few label values."""
    assert sleep_reason_class(reason) == expected


def samples(metrics: SiestaMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry, keyed by name and labels, through the text format."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def fake(sessions: dict[str, Session], held: int = 0, controller: Any = None) -> SiestaMetrics:
    lifecycle: Any = SimpleNamespace(
        observers=[], sessions=sessions, health=Health(), recorder=SimpleNamespace(pending=0)
    )
    metrics = SiestaMetrics(lifecycle, lambda: held, lambda: controller)
    assert lifecycle.observers == [metrics.observe]
    return metrics


def test_transitions_are_counted() -> None:
    """Wakes (with their duration), failed starts and sleeps by class are counted from
    the events; running time adds up from waking to asleep."""
    metrics = fake({})
    for event in [
        Transition("a", 100.0, Z, W, "request GET /"),
        Transition("a", 101.5, W, A, "request GET /", wake_seconds=1.5),
        Transition("a", 110.0, A, S, "idle for 5s >= idle_timeout 5s"),
        Transition("a", 111.0, S, Z, "idle for 5s >= idle_timeout 5s"),
        Transition("b", 120.0, Z, W, "request GET /"),
        Transition("b", 121.0, W, F, "start failed (3 in a row): exited"),
        Transition("c", 130.0, A, A, "re-adopted its running backend after a restart"),
        Transition("c", 140.0, A, Z, "backend exited with code 1"),
    ]:
        metrics.observe(event)
    got = samples(metrics)
    assert got[("siesta_wakes_total", ())] == 1
    assert got[("siesta_wake_failures_total", ())] == 1
    assert got[("siesta_wake_duration_seconds_count", ())] == 1
    assert got[("siesta_wake_duration_seconds_sum", ())] == 1.5
    assert got[("siesta_wake_duration_seconds_bucket", (("le", "2.5"),))] == 1
    assert got[("siesta_wake_duration_seconds_bucket", (("le", "1.0"),))] == 0
    assert got[("siesta_sleeps_total", (("reason", "idle"),))] == 1
    assert got[("siesta_sleeps_total", (("reason", "backend_exit"),))] == 1
    assert got[("siesta_sleeps_total", (("reason", "admin"),))] == 0
    assert metrics.awake_seconds(now=200.0) == 11 + 1 + 10


def test_live_state_is_read_at_scrape_time() -> None:
    """Sessions by state, held requests, traffic and controller counters come from the
    live objects when scraped; a removed session's traffic stays in the totals."""
    alice, bob = Session("alice", "web", state=A), Session("bob", "web")
    alice.activity.requests, alice.activity.bytes, alice.activity.connections = 5, 500, 2
    bob.activity.requests, bob.activity.bytes = 1, 10
    sessions = {"alice": alice, "bob": bob}
    controller = SimpleNamespace(evaluation_errors=3)
    metrics = fake(sessions, held=4, controller=controller)
    got = samples(metrics)
    assert got[("siesta_sessions", (("state", "AWAKE"),))] == 1
    assert got[("siesta_sessions", (("state", "ASLEEP"),))] == 1
    assert got[("siesta_sessions", (("state", "FAILED"),))] == 0
    assert got[("siesta_held_requests", ())] == 4
    assert got[("siesta_connections", ())] == 2
    assert got[("siesta_requests_total", ())] == 6
    assert got[("siesta_bytes_total", ())] == 510
    assert got[("siesta_policy_evaluation_errors_total", ())] == 3
    assert got[("siesta_probe_failures_total", ())] == 0
    alice.activity.requests += 10
    del sessions["bob"]
    metrics.retire(bob)
    assert samples(metrics)[("siesta_requests_total", ())] == 16


def test_metrics_of_a_running_siesta(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """/metrics (open, no token) parses as Prometheus text and counts a wake, its
    duration, the requests forwarded, and a sleep through the admin API."""
    run, base = launch_admin(siesta, monkeypatch)

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = httpx.get(f"{base}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

    before = scrape()
    assert before[("siesta_wakes_total", ())] == 0
    assert before[("siesta_sessions", (("state", "ASLEEP"),))] == 1
    for _ in range(3):
        assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    awake = scrape()
    assert awake[("siesta_wakes_total", ())] == 1
    assert awake[("siesta_wake_duration_seconds_count", ())] == 1
    assert awake[("siesta_wake_duration_seconds_sum", ())] > 0
    assert awake[("siesta_sessions", (("state", "AWAKE"),))] == 1
    assert awake[("siesta_requests_total", ())] == 3
    assert awake[("siesta_bytes_total", ())] > 0
    assert awake[("siesta_held_requests", ())] == 0
    assert awake[("siesta_awake_seconds_total", ())] > 0
    with client(base) as api:
        api.post("/api/sessions/alice/sleep")
    asleep = scrape()
    assert asleep[("siesta_sleeps_total", (("reason", "admin"),))] == 1
    assert asleep[("siesta_sessions", (("state", "ASLEEP"),))] == 1
    assert asleep[("siesta_policy_evaluation_errors_total", ())] == 0
