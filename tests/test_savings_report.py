"""`siesta report` and `siesta advise`: a replayed trace gives a known report; the JSON,
text and HTML forms; a stopped siesta's store; hourly intensity files.

Constants (sources in tests/test_costing.py): OpenCost's 0.031611 $/vCPU-h and
0.004237 $/GiB-h; CCF's 0.74 W per idle vCPU, 0.000392 kWh per GB-hour, PUE 1.135;
France's 40.48 g CO2e/kWh (OWID/Ember, 2024); 1 GiB = 1.073741824 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from siesta.config import load_config
from siesta.savings import carbon, offline, replayed
from siesta.savings import report as reporting
from siesta.savings.costing import model_of

from .admin import client, launch_admin
from .conftest import Launcher

EXAMPLES = Path(__file__).parent.parent / "examples"
IDLE_KWH_PER_HOUR = (0.74 / 1000 + 1.073741824 * 0.000392) * 1.135  # 1 vCPU + 1 GiB, idle
PRICE_PER_HOUR = 0.031611 + 0.004237  # 1 vCPU + 1 GiB


def example_config(tmp_path: Path) -> Path:
    """examples/siesta.yaml, every template reserving 1 vCPU and 1 GiB, run in France."""
    raw = yaml.safe_load((EXAMPLES / "siesta.yaml").read_text())
    for template in raw["templates"].values():
        template["resources"] = {"cpu": 1, "memory": "1Gi"}
    raw["savings"] = {"region": "FR"}
    raw["store"] = str(tmp_path / "state.db")
    path = tmp_path / "siesta.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def siesta_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siesta", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_replayed_trace_gives_a_known_report(tmp_path: Path) -> None:
    """examples/trace.csv replayed (wakes instant) against examples/siesta.yaml: the
    awake hours and wakes of `siesta policy replay` (6.53, 1.75, 1.42, 0.58 of 24h;
    3, 2, 3, 5 wakes). nightly-etl ran 02:00-03:05 and 23:00-23:40 (1.75h): its CPU,
    from the trace's samples, is 85 % x 40 min + 90 % x 25 min + 80 % x 40 min = 5310 s;
    its 22.25 idle hours at 1 vCPU + 1 GiB are the savings: 22.25 x 0.035848 $ and
    22.25 x 0.0013176 kWh x 40.48 g/kWh."""
    conf = load_config(example_config(tmp_path))
    snap = offline.from_trace(conf, EXAMPLES / "trace.csv", 0.0)
    built = reporting.build(snap.accounts, conf.savings, model_of(conf), snap.end)
    got = {s["id"]: s for s in reporting.to_json(built)["sessions"]}
    hours = {sid: round(s["awake_s"] / 3600, 2) for sid, s in got.items()}
    assert hours == {
        "ana-notebook": 6.53,
        "nightly-etl": 1.75,
        "ops-dashboard": 1.42,
        "team-wiki": 0.58,
    }
    assert {sid: s["wakes"] for sid, s in got.items()} == {
        "ana-notebook": 3,
        "nightly-etl": 2,
        "ops-dashboard": 3,
        "team-wiki": 5,
    }
    etl = got["nightly-etl"]
    assert etl["asleep_s"] == 22.25 * 3600
    assert etl["cpu_seconds"] == pytest.approx(0.85 * 2400 + 0.90 * 1500 + 0.80 * 2400)
    assert etl["saved_usd"] == pytest.approx(22.25 * PRICE_PER_HOUR)  # 0.797618
    assert etl["saved_kwh"] == pytest.approx(22.25 * IDLE_KWH_PER_HOUR)
    assert etl["saved_kg_co2e"] == pytest.approx(22.25 * IDLE_KWH_PER_HOUR * 40.48 / 1000)
    assert etl["awake_share"] == pytest.approx(1.75 / 24)
    total = reporting.to_json(built)["total"]
    assert total["wakes"] == 13
    assert total["saved_usd"] == pytest.approx(sum(s["saved_usd"] for s in got.values()))
    assert snap.spans["nightly-etl"] == [
        (snap.start + 2 * 3600, snap.start + 3 * 3600 + 300),
        (snap.start + 23 * 3600, snap.start + 23 * 3600 + 2400),
    ]


def test_cpu_seconds_integrate_samples_that_hold() -> None:
    """Samples hold until the next one; before the first, 0 %."""
    samples = [(10.0, 50.0), (20.0, 100.0)]
    assert replayed.cpu_seconds(samples, 0, 30) == pytest.approx(0.5 * 10 + 1.0 * 10)
    assert replayed.cpu_seconds(samples, 15, 25) == pytest.approx(0.5 * 5 + 1.0 * 5)
    assert replayed.cpu_seconds([], 0, 30) == 0


def test_cli_report_json_text_and_html(tmp_path: Path) -> None:
    """`siesta report --trace` prints the JSON (per session at least id, awake_s,
    asleep_s, wakes, saved_usd, saved_kg_co2e) and writes a self-contained HTML page
    with the three charts as inline SVG (no external resource); the text form has the
    session and template tables; `siesta advise --json` answers per template."""
    config = example_config(tmp_path)
    page = tmp_path / "report.html"
    trace = str(EXAMPLES / "trace.csv")
    done = siesta_cli(
        "report", "-c", str(config), "--trace", trace, "--json", "--html", str(page), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    for session in answer["sessions"]:
        assert {"id", "awake_s", "asleep_s", "wakes", "saved_usd", "saved_kg_co2e"} <= set(session)
    html = page.read_text()
    assert html.count("<svg") == 3
    assert 'aria-label="When each session was awake"' in html
    assert "src=" not in html
    assert "<link" not in html
    assert "<script" not in html
    assert "nightly-etl" in html
    assert "OpenCost" in html

    text = siesta_cli("report", "-c", str(config), "--trace", trace, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "Sessions" in text.stdout
    assert "Templates" in text.stdout
    assert "nightly-etl" in text.stdout

    advice = siesta_cli("advise", "-c", str(config), "--trace", trace, "--json", cwd=tmp_path)
    assert advice.returncode == 0, advice.stderr
    templates = {t["template"]: t for t in json.loads(advice.stdout)["templates"]}
    assert templates["job"]["best_location"]["location"] == "FR"
    assert templates["job"]["best_window"]["duration_h"] == 2


def test_cli_report_errors_name_the_problem(tmp_path: Path) -> None:
    """No store yet: exit 1 saying so; a trace naming an unknown session: exit 2 with
    its line."""
    config = example_config(tmp_path)
    done = siesta_cli("report", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 1
    assert "no state yet" in done.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("2026-03-02T00:00:00Z,nobody,request,1\n")
    done = siesta_cli("report", "-c", str(config), "--trace", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert "line 1" in done.stderr
    assert "nobody" in done.stderr


def test_report_of_a_stopped_siesta_reads_its_store(
    siesta: Launcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """siesta wakes alice and stops; `siesta report --json` (no siesta running, no
    token) reads the stored ledger: one wake and sleep for alice, none for bob."""
    sessions = {"alice": {"template": "web"}, "bob": {"template": "web"}}
    run, base = launch_admin(siesta, monkeypatch, sessions=sessions)
    with client(base) as api:
        api.post("/api/sessions/alice/wake").raise_for_status()
    assert run.stop() == 0
    monkeypatch.delenv("SIESTA_ADMIN_TOKEN")
    done = siesta_cli("report", "-c", str(run.config), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got: dict[str, Any] = {s["id"]: s for s in json.loads(done.stdout)["sessions"]}
    assert (got["alice"]["wakes"], got["alice"]["sleeps"]) == (1, 1)  # slept at shutdown
    assert got["alice"]["awake_s"] > 0
    assert got["bob"]["wakes"] == 0
    assert got["bob"]["awake_share"] == 0


def test_hourly_intensity_files(tmp_path: Path) -> None:
    """Hourly CSVs give each UTC hour its mean, from hours of day or ISO times (with an
    offset converted to UTC, a header skipped); a missing hour, a bad value or a bad
    time is refused naming the file and line."""
    rows = "when,g\n" + "".join(f"{h},{h * 10}\n" for h in range(24))
    assert carbon.parse_hourly(rows, "a.csv").hourly[5] == 50
    times = "".join(
        f"2026-03-0{d}T{h:02d}:00:00+01:00,{100 + d}\n" for d in (1, 2) for h in range(24)
    )
    profile = carbon.parse_hourly(times, "b.csv")
    assert profile.hourly == (101.5,) * 24
    with pytest.raises(
        carbon.IntensityFileError, match=r"c.csv: no value for the UTC hour\(s\) 23"
    ):
        carbon.parse_hourly("".join(f"{h},1\n" for h in range(23)), "c.csv")
    with pytest.raises(carbon.IntensityFileError, match=r"d\.csv:2: 'x' is not a number"):
        carbon.parse_hourly("0,1\n1,x\n", "d.csv")
    with pytest.raises(carbon.IntensityFileError, match=r"e\.csv:1: 'noon' is neither"):
        carbon.parse_hourly("noon,1\n", "e.csv")
    with pytest.raises(carbon.IntensityFileError, match=r"f\.csv:1: hour 24"):
        carbon.parse_hourly("24,1\n", "f.csv")


def test_charts_say_how_to_get_matplotlib_when_it_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib (an optional dependency) a chart is refused with the install
    hint, never an ImportError; the report's numbers need no charts."""
    from siesta.savings import charts

    conf = load_config(example_config(tmp_path))
    snap = offline.from_trace(conf, EXAMPLES / "trace.csv", 0.0)
    built = reporting.build(snap.accounts, conf.savings, model_of(conf), snap.end)
    assert "<svg" in charts.templates(built)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(charts.ChartsUnavailable, match=r"pip install 'siesta\[charts\]'"):
        charts.intensity(built)
    assert reporting.to_json(built)["total"]["wakes"] == 13
