"""`siesta policy replay`: the simulation on the shipped example, small traces, the CLI.

The expected numbers for the example were worked out by hand from examples/trace.csv
and examples/siesta.yaml (the reasoning is in each test's docstring), not copied from
a run, so a change in the decision code or the model shows up here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from siesta.config import load_config, parse_config
from siesta.replay import (
    SessionReport,
    TraceError,
    parse_trace,
    read_trace,
    replay,
    setups_from,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "examples" / "siesta.yaml"
EXAMPLE_TRACE = ROOT / "examples" / "trace.csv"
DAY = 86400.0
MARGIN = 0.001  # STRICT_MARGIN: `idle_for > 15m` becomes true 1 ms after 15m


@pytest.fixture(scope="module")
def example() -> dict[str, SessionReport]:
    report = replay(read_trace(EXAMPLE_TRACE), setups_from(load_config(EXAMPLE_CONFIG)))
    assert report.end - report.start == DAY
    return {s.session: s for s in report.sessions}


def _counts(report: SessionReport) -> tuple[int, int, int]:
    return report.sleeps, report.wakes, report.false_sleeps


def test_example_notebook(example: dict[str, SessionReport]) -> None:
    """ana-notebook (idle > 30m, cpu < 5, no busy kernel; min_awake 10m).

    Wakes at 08:55. Requests every <=25m until 10:05, then a busy kernel and cpu 95
    until 11:20, when both drop: the check on the 30 s grid from 08:55 falls at 11:20
    exactly, so it sleeps then (2h25m). Wakes at 13:30; requests at most 25m apart until
    16:35; sleeps at 17:05 + 1 ms (3h35m). Wakes at 17:12, 7m after that sleep: under
    min_awake, a false sleep. Last request 17:14: sleeps at 17:44 + 1 ms (32m).
    """
    nb = example["ana-notebook"]
    assert (nb.template, nb.policy, nb.thrash_window) == ("notebook", "notebooks", 600.0)
    assert _counts(nb) == (3, 3, 1)
    assert nb.awake_seconds == pytest.approx(8700 + 12900 + 1920 + 2 * MARGIN, abs=1e-4)
    assert nb.always_on_seconds == DAY
    assert [c.what for c in nb.changes] == ["wake", "sleep"] * 3
    assert [c.false for c in nb.changes if c.what == "wake"] == [False, False, True]
    assert "cpu_percent=3" in nb.changes[1].reason
    assert nb.evaluation_errors == 0


def test_example_dashboard_with_a_silent_websocket(example: dict[str, SessionReport]) -> None:
    """ops-dashboard (idle > 15m, min_awake 5m): its open websocket is silent, so it
    does not keep the backend awake. Awake 09:10-09:45, 14:00-14:35, 14:45-15:00
    (each end + 1 ms); the 14:45 wake is 10m after a sleep: beyond min_awake, not false.
    The 18:30 disconnect comes while asleep and is ignored."""
    dash = example["ops-dashboard"]
    assert _counts(dash) == (3, 3, 0)
    assert dash.awake_seconds == pytest.approx(35 * 60 + 35 * 60 + 15 * 60 + 3 * MARGIN, abs=1e-4)
    assert dash.thrash_window == 300.0


def test_example_nightly_job(example: dict[str, SessionReport]) -> None:
    """nightly-etl (idle > 10m and cpu < 2, checked every minute): a job keeps its
    backend busy without traffic. 02:00-03:05 and 23:00-23:40 (the cpu drops land on
    the 1-minute grid of checks). No min_awake: the window is the template's default
    idle_timeout, 15m."""
    etl = example["nightly-etl"]
    assert _counts(etl) == (2, 2, 0)
    assert etl.awake_seconds == pytest.approx(65 * 60 + 40 * 60, abs=1e-4)
    assert etl.thrash_window == 900.0


def test_example_wiki_thrashes_on_a_short_idle_timeout(example: dict[str, SessionReport]) -> None:
    """team-wiki (no policy, idle_timeout 5m: idle_for >= 5m). Requests 10:00, 10:03,
    10:11, 10:14, 10:25, 10:27, 10:34, 15:00, 15:02: asleep at 10:08, 10:19, 10:32,
    10:39, 15:07; the wakes at 10:11 (3m after a sleep) and 10:34 (2m) are false."""
    wiki = example["team-wiki"]
    assert (wiki.policy, wiki.thrash_window) == ("idle_timeout", 300.0)
    assert _counts(wiki) == (5, 5, 2)
    assert wiki.awake_seconds == pytest.approx((8 + 8 + 7 + 5 + 7) * 60, abs=1e-6)
    assert wiki.saved_fraction == pytest.approx(1 - 2100 / DAY)


CONFIG = """\
policies:
  chatty:
    sleep_when: 'idle_for > duration("10m") && connections == 0'
  rate:
    sleep_when: 'requests_1m < 2 && idle_for > duration("1m")'
templates:
  web: {command: [python3, -m, siesta.demo], idle_timeout: 10m}
  ws: {command: [python3, -m, siesta.demo], policy: chatty}
  api: {command: [python3, -m, siesta.demo], policy: rate}
sessions:
  a: {template: web}
  b: {template: ws}
  c: {template: api}
"""


def _replay(trace: str, wake_seconds: float = 0.0) -> dict[str, SessionReport]:
    config = parse_config(CONFIG, base_dir=Path("."))
    report = replay(parse_trace(trace), setups_from(config), wake_seconds=wake_seconds)
    return {s.session: s for s in report.sessions}


def test_an_open_connection_keeps_awake_when_the_policy_reads_it() -> None:
    """connect wakes the session; with `connections == 0` in the rule it stays awake
    until the disconnect, then sleeps 10m (+1 ms) after that last byte."""
    got = _replay("0,b,connect,\n3600,b,disconnect,\n7200,b,cpu,0\n")["b"]
    assert _counts(got) == (1, 1, 0)
    assert got.awake_seconds == pytest.approx(3600 + 600 + MARGIN, abs=1e-4)
    assert got.changes[0].reason == "connect (line 1)"


def test_wake_time_delays_the_served_request_and_counts_as_awake() -> None:
    """With a 30 s wake, the request is served (last activity) at 30 s, so the 10m
    idle_timeout sleep comes at 630 s; the backend ran from 0."""
    got = _replay("0,a,request,\n3600,a,cpu,1\n", wake_seconds=30)["a"]
    assert got.awake_seconds == pytest.approx(630)
    assert _counts(got) == (1, 1, 0)


def test_requests_while_waking_do_not_wake_twice() -> None:
    """Requests held during a wake are part of that wake."""
    got = _replay("0,a,request,\n1,a,request,\n2,a,connect,\n3600,a,cpu,1\n", wake_seconds=5)
    assert got["a"].wakes == 1


def test_rate_signals_come_from_the_controllers_rate_window() -> None:
    """requests_1m is sampled at checks like production (every 30 s, as the rule reads
    a rate, or at the foreseen sleep). Requests at 0-40 s: at 60 s the rate is 4 a
    minute (those after the wake); at 90 s it is 1 (since the 30 s sample), idle 50 s,
    so the sleep is foreseen at 40 s + 1m + 1 ms; the check then still counts 1."""
    trace = (
        "0,c,request,\n" + "".join(f"{t},c,request,\n" for t in (10, 20, 30, 40)) + "900,c,cpu,0\n"
    )
    got = _replay(trace)["c"]
    assert _counts(got) == (1, 1, 0)
    assert got.awake_seconds == pytest.approx(100 + MARGIN, abs=1e-6)
    assert "requests_1m=1" in got.changes[1].reason


def test_trace_errors_name_the_line() -> None:
    """Unknown events, bad values and sessions missing from the config are refused
    with the line; a header, comments and blank lines are fine; rows may be unsorted."""
    rows = parse_trace("time,session,event,value\n# c\n\n20,a,request,10\n5,a,cpu,1.5\n")
    assert [(r.at, r.event) for r in rows] == [(5.0, "cpu"), (20.0, "request")]
    with pytest.raises(TraceError, match=r"<trace>:2: unknown event 'poke'"):
        parse_trace("0,a,request\n1,a,poke,\n")
    with pytest.raises(TraceError, match=r":1: app needs a JSON object"):
        parse_trace("0,a,app,[1]\n")
    with pytest.raises(TraceError, match=r":1: cpu needs a number"):
        parse_trace("0,a,cpu,lots\n")
    with pytest.raises(TraceError, match=r":1: time 'yesterday' is neither ISO 8601"):
        parse_trace("yesterday,a,request,\n")
    with pytest.raises(TraceError, match=r"line 2: session 'zed' is not under `sessions:`"):
        _replay("0,a,request,\n1,zed,request,\n")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m siesta ARGS` with a wide terminal."""
    return subprocess.run(
        [sys.executable, "-m", "siesta", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_the_replay_command_on_the_example() -> None:
    """The command prints one row per session with the counts, the definition of a
    false sleep, and with --timeline every sleep and wake with its reason."""
    done = cli(
        "policy",
        "replay",
        "--config",
        str(EXAMPLE_CONFIG),
        "--trace",
        str(EXAMPLE_TRACE),
        "--timeline",
    )
    assert done.returncode == 0, done.stderr
    lines: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        if line.strip():
            lines.setdefault(line.split()[0], line.split())  # the table, before the timeline
    assert lines["ana-notebook"][1:] == [
        "notebooks",
        "6.53",
        "of",
        "24.00",
        "73%",
        "3",
        "3",
        "1",
        "10m",
    ]
    assert lines["team-wiki"][1:] == [
        "idle_timeout",
        "0.58",
        "of",
        "24.00",
        "98%",
        "5",
        "5",
        "2",
        "5m",
    ]
    assert "false: the false sleeps (thrash)" in done.stdout
    assert "2026-03-02 17:12:00 wake  request (line 52) (after a false sleep)" in done.stdout
    assert "[idle_for=1h15m, cpu_percent=3" in done.stdout
    help_text = cli("policy", "replay", "--help").stdout
    for word in ("time,session,event,value", "request", "connect", "disconnect", "cpu", "app"):
        assert word in help_text


def test_the_replay_command_refuses_a_bad_trace(tmp_path: Path) -> None:
    """A bad row is one line on stderr naming the file and line, exit 2."""
    trace = tmp_path / "t.csv"
    trace.write_text(
        "2026-03-02T08:00:00Z,team-wiki,request,\n2026-03-02T08:01:00Z,team-wiki,nap,\n"
    )
    done = cli("policy", "replay", "-c", str(EXAMPLE_CONFIG), "-t", str(trace))
    assert done.returncode == 2
    assert f"{trace}:2: unknown event 'nap'" in done.stderr.replace("\n", "")
