"""The resource signals: cpu_percent over a window sampled on its own timer, memory now.

End to end against a real `siesta up` whose backend starts a real CPU-burning child
process; the sampler itself against a provider that answers chosen usage (named a
stand-in below), on a fake clock; and the config check that refuses resource rules on
a provider that cannot measure them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from siesta.config import MEASURING_PROVIDERS, ConfigError, parse_config
from siesta.core.model import Session, State
from siesta.providers.base import Usage
from siesta.resources import SAMPLES_PER_WINDOW, Sampler, SamplerTemplate, Totals
from siesta.testing import FakeClock

from .admin import client, launch_admin
from .conftest import BACKEND, Launcher, wait_for

BURNER = (
    "import os, subprocess, sys\n"
    "if os.environ.get('BURN') == '1':\n"
    "    subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)
"""A backend that first starts a child burning one core (when BURN=1), then becomes
tests/backend.py: the child belongs to its process tree."""

RULE = 'idle_for > duration("2s") && cpu_percent < 5.0'
CHECK_EVERY = 1.0


def _template(burn: bool) -> dict[str, Any]:
    return {
        "command": [sys.executable, "-c", BURNER, BACKEND, "{port}", "{session}"],
        "env": {"BURN": "1" if burn else "0"},
        "ready": {"http": "/"},
        "stop_grace": "2s",
        "cpu_window": "2s",
        "policy": "busy",
    }


def test_a_busy_child_keeps_its_session_awake_and_explain_changes_nothing(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No traffic after the wake, idle rule of 2s guarded by cpu_percent < 5: the backend
    whose child burns a core stays awake for well over 3 x check_every while `policy
    explain` is asked every few hundred ms (it reads the window, never shortens it);
    the same backend without the busy child sleeps."""
    run, base = launch_admin(
        siesta,
        monkeypatch,
        templates={"burning": _template(True), "calm": _template(False)},
        sessions={"hot": {"template": "burning"}, "cold": {"template": "calm"}},
        policies={"busy": {"sleep_when": RULE, "check_every": f"{CHECK_EVERY:g}s"}},
    )
    with client(base) as api:
        assert api.post("/api/sessions/hot/wake").status_code == 200
        assert api.post("/api/sessions/cold/wake").status_code == 200
        woke = time.monotonic()
        seen: list[float] = []
        while time.monotonic() < woke + 4 * CHECK_EVERY + 2.0:  # idle rule long true by then
            answer = api.get("/api/sessions/hot/explain").json()
            assert answer["state"] == "AWAKE", answer
            if answer["signals"]["cpu_percent"] > 0:
                seen.append(answer["signals"]["cpu_percent"])
            time.sleep(0.2)
        assert run.state("hot") is State.AWAKE
        assert seen, "explain never showed a cpu_percent"
        assert min(seen[1:] or seen) > 20.0, seen  # a core's worth, over the window
    wait_for(lambda: run.state("cold") is State.ASLEEP, timeout=20, what="cold to sleep")
    stopping = next(e for e in reversed(run.events("cold")) if e.new is State.STOPPING)
    assert stopping.reason.startswith(f"sleep_when: {RULE}")


def test_what_a_backend_burned_while_awake_shows_in_the_savings(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler feeds the ledger: a real backend whose child burns a core, put to sleep
    by a plain idle rule (which reads no resource, so only the wake's and the sleep's
    samples are taken), shows the CPU seconds it used in /api/savings once asleep."""
    run, base = launch_admin(
        siesta,
        monkeypatch,
        templates={"burning": _template(True)},
        sessions={"hot": {"template": "burning"}},
        policies={"busy": {"sleep_when": 'idle_for > duration("2s")', "check_every": "1s"}},
    )
    with client(base) as api:
        assert api.post("/api/sessions/hot/wake").status_code == 200
        wait_for(lambda: run.state("hot") is State.ASLEEP, timeout=30, what="hot to sleep")

        def burned() -> float:
            report = api.get("/api/savings").json()
            return float(next(s for s in report["sessions"] if s["id"] == "hot")["cpu_seconds"])

        wait_for(lambda: burned() > 0.2, timeout=10, what="the burned CPU in the ledger")
        assert api.get("/api/savings").json()["total"]["cpu_seconds"] >= burned()


class StandInProvider:
    """Stands in for a provider: answers the usage the test sets (not a real backend)."""

    def __init__(self) -> None:
        self.usages: dict[str, Usage | None] = {}
        self.asked = 0

    def measures(self, template: str) -> bool:
        return template != "blind"

    async def usage(self, session: str) -> Usage | None:
        self.asked += 1
        answer = self.usages.get(session)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Sessions:
    """Stands in for the lifecycle: its sessions and its listeners, moved by the test."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.listeners: list[Any] = []

    def move(self, session: Session, new: State) -> None:
        old, session.state = session.state, new
        for listener in self.listeners:
            listener(session, old, new)


async def test_the_window_is_an_average_over_its_samples_whenever_it_is_read() -> None:
    """1 CPU second per 2 wall seconds is 50%, however often window() is asked; the
    window covers cpu_window; totals add CPU, GiB-hours and the peak; the sleep hook
    gets the awake period's totals, after a last sample."""
    clock, provider, sessions = FakeClock(), StandInProvider(), Sessions()
    spec = SamplerTemplate(window=12.0, reads=True)
    sampler = Sampler(sessions, provider, {"web": spec}, clock=clock)
    slept: list[tuple[str, Totals]] = []
    sampler.on_sleep.append(lambda sid, totals: slept.append((sid, totals)))
    alice = Session("alice", "web")
    sessions.move(alice, State.WAKING)
    provider.usages["alice"] = Usage(cpu_seconds=3.0, memory_bytes=1 << 30)  # start-up CPU
    sessions.move(alice, State.AWAKE)
    assert spec.every == 12.0 / SAMPLES_PER_WINDOW
    assert await sampler.tick() == 1
    assert sampler.window("alice") is None  # one sample: no window yet
    for step in range(1, 13):
        clock.advance(spec.every)
        provider.usages["alice"] = Usage(3.0 + step * 1.0, 1 << 30)
        for _ in range(5):
            sampler.window("alice")  # reading changes nothing
        assert await sampler.tick() == 1
    window = sampler.window("alice")
    assert window is not None
    assert window.cpu_percent == pytest.approx(50.0)
    assert window.memory_bytes == 1 << 30
    totals = sampler.totals("alice")
    assert totals.cpu_seconds == pytest.approx(3.0 + 12.0)  # started here: from zero
    assert totals.memory_gib_hours == pytest.approx(24.0 / 3600)
    provider.usages["alice"] = Usage(16.0, 2 << 30)
    sessions.move(alice, State.STOPPING)
    await sampler.close()
    assert slept == [("alice", sampler.totals("alice"))]
    assert slept[0][1].cpu_seconds == pytest.approx(16.0)
    assert slept[0][1].peak_memory_bytes == 2 << 30
    assert sampler.window("alice") is None  # asleep: not sampled


async def test_failing_or_blind_providers_are_never_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider that raises is a missing sample, counted and logged once for the round
    with its reason; a template the provider cannot measure is not sampled at all;
    sleeping sessions cost nothing."""
    clock, provider, sessions = FakeClock(), StandInProvider(), Sessions()
    specs = {"web": SamplerTemplate(6.0, True), "blind": SamplerTemplate(6.0, True)}
    sampler = Sampler(sessions, provider, specs, clock=clock)
    bob, eve = Session("bob", "web"), Session("eve", "blind")
    provider.usages["bob"] = RuntimeError("stats endpoint down")  # type: ignore[assignment]
    for session in (bob, eve):
        sessions.move(session, State.WAKING)
        sessions.move(session, State.AWAKE)
    assert await sampler.tick() == 1
    assert sampler.failures == 1
    said = [r.getMessage() for r in caplog.records if "gave no usage" in r.getMessage()]
    assert said == ["1 of 1 sessions gave no usage: bob (stats endpoint down)"]
    assert not sampler.measured("eve")
    assert sampler.ready_at("eve") is None
    sessions.move(bob, State.STOPPING)
    await sampler.close()
    asked = provider.asked
    clock.advance(3600)
    assert await sampler.tick() == 0
    assert provider.asked == asked


def test_resource_rules_need_a_provider_that_measures(tmp_path: Path) -> None:
    """cpu_percent or memory_bytes on a keda template: refused at load, with the line."""
    text = (
        "keda: {listen: '127.0.0.1:9090'}\n"
        "policies:\n"
        "  hot:\n"
        "    sleep_when: 'cpu_percent < 5.0 && idle_for > duration(\"1m\")'\n"
        "templates:\n"
        "  nb: {provider: keda, address: 'http://nb-{session}.svc:8888', policy: hot}\n"
        "  web: {command: [app], policy: hot}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="siesta.yaml", base_dir=tmp_path)
    assert caught.value.problems == [
        "siesta.yaml:4 policies.hot.sleep_when: reads cpu_percent, which provider keda of "
        "template 'nb' cannot measure (siesta does not read the cluster's metrics): rely on "
        "traffic or an activity probe (app.*)"
    ]


def test_the_config_knows_which_providers_measure(tmp_path: Path) -> None:
    """The config's list agrees with each provider's own `measures()`."""
    from siesta.providers.docker import DockerProvider
    from siesta.providers.keda import KedaProvider
    from siesta.providers.local import LocalProvider

    classes = {"local": LocalProvider, "keda": KedaProvider, "docker": DockerProvider}
    for kind, cls in classes.items():
        assert cls.measures(None, "any") is (kind in MEASURING_PROVIDERS), kind  # type: ignore[arg-type]
