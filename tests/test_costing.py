"""Money, energy and CO2e of accounts, against examples worked by hand.

The constants, with their sources (also in siesta.savings.settings):
- 0.031611 $/vCPU-hour and 0.004237 $/GiB-hour: OpenCost's default prices
  (opencost/opencost configs/default.json, "Default prices based on GCP us-central1");
- 0.74 W and 3.5 W per vCPU at 0 % and 100 % CPU, 0.000392 kWh per GB-hour of memory,
  PUE 1.135, 50 % utilisation when unmeasured: the Cloud Carbon Footprint methodology,
  Appendix I (AWS);
- 40.48 g CO2e/kWh for France, 471.08 for the world: Our World in Data's 2024 carbon
  intensity of electricity (Ember 2025, Energy Institute 2025; CC BY 4.0);
- 1 GiB = 1.073741824 GB; 8766 hours in a year of 365.25 days.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from siesta.config import ConfigError, parse_config
from siesta.core.model import State, Transition
from siesta.ledger import Account, add_usage, apply, closed_at, open_account
from siesta.savings import carbon
from siesta.savings.costing import EMPTY, Model, total
from siesta.savings.settings import (
    EmbodiedConf,
    ResourcesConf,
    SavingsConf,
    parse_cpu,
    parse_memory,
)

CPU_PRICE, MEM_PRICE = 0.031611, 0.004237
MIN_W, MAX_W, MEM_KWH, PUE = 0.74, 3.5, 0.000392, 1.135
GB_PER_GIB = 1.073741824
FRANCE, WORLD = 40.48, 471.08


def day(template: str, awake_from: float, awake_to: float, end: float = 86400) -> Account:
    """A session created at 0 (1970-01-01 00:00 UTC), awake from-to, followed until end."""
    account = open_account("s", template, 0.0)
    for at, old, new in (
        (awake_from, State.ASLEEP, State.WAKING),
        (awake_from, State.WAKING, State.AWAKE),
        (awake_to, State.AWAKE, State.ASLEEP),
    ):
        account = apply(account, Transition("s", at, old, new, "test", 1.0))
    return closed_at(account, end)


def model(region: str = "FR", **savings: object) -> Model:
    conf = SavingsConf.model_validate({"region": region, **savings})
    return Model.of(conf, {"k8s": ResourcesConf(cpu=0.5, memory=512 * 2**20)})


def test_declared_requests_unmeasured_two_hours_of_a_day() -> None:
    """A Kubernetes template (0.5 vCPU, 512 MiB declared, use not measured) awake 2h of
    24h in France: actual 1 vCPU-h and 1 GiB-h; always-on 12 of each; energy at the
    50 % fallback while awake, 0 % while idle; CO2e at France's 40.48 g/kWh."""
    got = model().cost(day("k8s", 0, 7200))
    assert got.actual.vcpu_hours == 1.0
    assert got.actual.gib_hours == 1.0
    assert got.always_on.vcpu_hours == 12.0
    assert got.actual.usd == pytest.approx(CPU_PRICE + MEM_PRICE)  # 0.035848
    assert got.always_on.usd == pytest.approx(12 * (CPU_PRICE + MEM_PRICE))  # 0.430176
    assert got.saved_usd == pytest.approx(11 * 0.035848)

    awake_watts = MIN_W + 0.5 * (MAX_W - MIN_W)  # 2.12 W per vCPU
    awake_kwh = (awake_watts * 1.0 / 1000 + 1.0 * GB_PER_GIB * MEM_KWH) * PUE
    idle_kwh = (MIN_W * 11 / 1000 + 11 * GB_PER_GIB * MEM_KWH) * PUE
    assert got.actual.kwh == pytest.approx(awake_kwh)  # 0.0028839 kWh
    assert got.saved_kwh == pytest.approx(idle_kwh)  # 0.0144939 kWh
    assert got.actual.kg_co2e == pytest.approx(awake_kwh * FRANCE / 1000)
    assert got.saved_kg_co2e == pytest.approx(idle_kwh * FRANCE / 1000)
    assert got.awake_share == pytest.approx(2 / 24)
    assert got.sci_g_per_session_hour == pytest.approx(awake_kwh * FRANCE / 2)
    assert got.basis == "requests"


def test_measured_peak_local_backend_in_the_world() -> None:
    """A local backend measured at 1800 CPU-seconds and 0.25 GiB-h over one awake hour
    (0.5 cores: its peak), 256 MiB at most: with no declared resources its size is the
    peak, so it ran at 100 % of 0.5 vCPU; 23 idle hours at 0.5 vCPU and 0.25 GiB."""
    account = add_usage(day("local", 0, 3600), 1800, 0.25, 256 * 2**20, period=3600)
    got = model("WORLD").cost(account)
    assert got.basis == "peak"
    assert (got.actual.vcpu_hours, got.actual.gib_hours) == (0.5, 0.25)
    busy_kwh = (MAX_W * 0.5 / 1000 + 0.25 * GB_PER_GIB * MEM_KWH) * PUE
    idle_kwh = (MIN_W * 0.5 * 23 / 1000 + 0.25 * 23 * GB_PER_GIB * MEM_KWH) * PUE
    assert got.actual.kwh == pytest.approx(busy_kwh)
    assert got.saved_kwh == pytest.approx(idle_kwh)
    assert got.saved_kg_co2e == pytest.approx(idle_kwh * WORLD / 1000)
    assert got.saved_usd == pytest.approx(23 * (0.5 * CPU_PRICE + 0.25 * MEM_PRICE))


def test_usage_above_the_request_is_what_counts() -> None:
    """OpenCost allocates max(request, usage): 2 CPU-hours used in 1 awake hour of a
    0.5 vCPU request is 2 vCPU-hours actual; always-on adds only the idle request."""
    account = add_usage(day("k8s", 0, 3600, end=7200), 7200, 0.0, 0, period=3600)
    got = model().cost(account)
    assert got.actual.vcpu_hours == 2.0
    assert got.always_on.vcpu_hours == 2.5
    assert got.saved_usd == pytest.approx(0.5 * CPU_PRICE + 0.5 * MEM_PRICE)


def test_hourly_intensity_weighs_each_hour(tmp_path: Path) -> None:
    """An hourly profile of 500 g/kWh but 100 at 02:00 UTC: a session awake 02:00-03:00
    emits at 100; its 23 idle hours at 500 (the hours it slept)."""
    csv = tmp_path / "hourly.csv"
    csv.write_text("hour,g\n" + "".join(f"{h},{100 if h == 2 else 500}\n" for h in range(24)))
    got = model(hourly=str(csv)).cost(day("k8s", 7200, 10800))
    assert got.actual.kg_co2e == pytest.approx(got.actual.kwh * 100 / 1000)
    assert got.saved_kg_co2e == pytest.approx(got.saved_kwh * 500 / 1000)


def test_embodied_emissions_per_reserved_vcpu_hour() -> None:
    """SCI's M = TE x TR/EL x RR/ToR: a 1200 kg server of 48 vCPUs kept 4 years gives
    1,200,000 g / (4 x 8766 h x 48) = 0.71298 g per vCPU-hour; 11 idle vCPU-hours saved."""
    embodied = {"server_kg_co2e": 1200, "server_vcpus": 48}
    assert EmbodiedConf.model_validate(embodied).g_per_vcpu_hour == pytest.approx(0.712983, 1e-5)
    plain = model().cost(day("k8s", 0, 7200))
    got = model(embodied=embodied).cost(day("k8s", 0, 7200))
    per_vcpu_hour = 1_200_000 / (4 * 8766 * 48) / 1000  # kg
    assert got.actual.embodied_kg == pytest.approx(1.0 * per_vcpu_hour)
    assert got.saved_kg_co2e == pytest.approx(plain.saved_kg_co2e + 11 * per_vcpu_hour)


def test_nothing_known_costs_nothing_and_totals_add_up() -> None:
    """A local template never measured has no size: its time is counted, its cost is 0.
    Totals add footprints, time and wakes; the sum of none is empty."""
    unknown = model().cost(day("local", 0, 3600))
    assert unknown.basis == "none"
    assert unknown.saved_usd == 0
    assert unknown.actual.kwh == 0
    assert unknown.awake_seconds == 3600
    known = model().cost(day("k8s", 0, 7200))
    both = total([unknown, known])
    assert both.sessions == 2
    assert both.wakes == 2
    assert both.saved_usd == pytest.approx(known.saved_usd)
    assert both.basis == "mixed"
    assert total([]) is EMPTY
    assert EMPTY.sci_g_per_session_hour is None


def test_quantities_and_config_errors() -> None:
    """CPU and memory take Kubernetes quantities; bad ones and unknown regions are
    refused at load with the key."""
    assert parse_cpu("250m") == 0.25
    assert parse_cpu(2) == 2.0
    assert parse_memory("1Gi") == 2**30
    assert parse_memory("1.5G") == 1_500_000_000
    assert parse_memory(4096) == 4096
    for bad, why in (("0", "more than 0"), ("-1", "not a CPU quantity"), ("x", "not a CPU")):
        with pytest.raises(ValueError, match=why):
            parse_cpu(bad)
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "templates: {web: {command: [x], resources: {cpu: 1, memory: 1Qi}}}\n"
            "savings: {region: Atlantis}\n",
            base_dir=Path("."),
        )
    problems = "\n".join(caught.value.problems)
    assert "templates.web.resources.memory: '1Qi' is not a memory quantity" in problems
    assert "savings.region: no grid intensity for 'Atlantis'" in problems


def test_shipped_table_rows_have_source_and_year() -> None:
    """Every row of the shipped table has a name, a year, a source and a sane value."""
    rows = carbon.table()
    assert rows["FR"].g_per_kwh == FRANCE
    assert rows["WORLD"].g_per_kwh == WORLD
    for row in rows.values():
        assert row.year == 2024
        assert "CC BY 4.0" in row.source
        assert 0 < row.g_per_kwh < 1500
