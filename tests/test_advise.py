"""`advise` on a constructed two-region case whose answer is worked out by hand.

The constants: OpenCost's default prices (0.031611 $/vCPU-h, 0.004237 $/GiB-h), the
Cloud Carbon Footprint coefficients (0.74 / 3.5 W per vCPU, 50 % utilisation when
unmeasured, 0.000392 kWh per GB-hour, PUE 1.135) and 30.4375 days a month
(365.25 / 12). See tests/test_costing.py for their sources.
"""

from __future__ import annotations

import pytest

from siesta.ledger import HOURS, Account
from siesta.savings import advise as advice_module
from siesta.savings.advise import DAYS_PER_MONTH, advise, best_window
from siesta.savings.carbon import Profile
from siesta.savings.costing import Model
from siesta.savings.settings import ResourcesConf

DAYS = 10
# Region B: cleanest between 02:00 and 04:00 UTC, dirty by day.
B_HOURS = (150.0, 120.0, 100.0, 90.0, 110.0, 150.0, *([500.0] * 18))
REGIONS = {"A": Profile.flat(300.0, "A"), "B": Profile(B_HOURS, "B")}
FACTORS = {"A": 1.0, "B": 1.2}


def session(sid: str, hours: dict[int, float]) -> Account:
    """A session of template `batch` followed for 10 days, awake `hours` (hour of day ->
    hours awake per day) each day."""
    awake = [0.0] * HOURS
    for hour, per_day in hours.items():
        awake[hour] = per_day * 3600 * DAYS
    awake_s = sum(awake)
    return Account(
        sid,
        "batch",
        0.0,
        since=DAYS * 86400.0,
        awake_seconds=awake_s,
        asleep_seconds=DAYS * 86400 - awake_s,
        awake_by_hour=tuple(awake),
        tracked_by_hour=(DAYS * 3600.0,) * HOURS,
    )


def test_two_regions_best_location_cheapest_and_best_window() -> None:
    """A batch template (1 vCPU, 1 GiB declared; use unmeasured) awake 04:00-06:00 UTC
    every day. Per awake hour: (0.74 + 0.5 x 2.76 = 2.12 W) x 1 vCPU / 1000 + 1 GiB x
    1.073741824 x 0.000392 kWh, x 1.135 = 0.00288393 kWh, and 0.035848 $. A month is
    2 x 30.4375 = 60.875 awake hours: 0.175559 kWh.
    - A (flat 300 g/kWh, prices x1.0): 0.0526677 kg, 2.18225 $;
    - B (110 and 150 g/kWh at 04 and 05, prices x1.2): 130 g/kWh, 0.0228227 kg, 2.61870 $.
    B is the cleanest, A the cheapest. In B, the best 2-hour window starts at 02:00 (100
    and 90: 95 g/kWh): 0.0166781 kg a month."""
    model = Model(resources={"batch": ResourcesConf(cpu=1, memory=2**30)})
    (got,) = advise([session("s1", {4: 1, 5: 1})], model, REGIONS, FACTORS)
    kwh_hour = (2.12 / 1000 + 1.073741824 * 0.000392) * 1.135
    month_kwh = 60.875 * kwh_hour
    assert DAYS_PER_MONTH == 30.4375
    assert got.awake_hours_per_day == pytest.approx(2)
    assert got.kwh_per_month == pytest.approx(month_kwh)
    assert got.best is not None
    assert got.cheapest is not None
    assert got.best.location == "B"
    assert got.best.g_co2e_per_kwh == pytest.approx(130)
    assert got.best.kg_co2e_per_month == pytest.approx(month_kwh * 130 / 1000)  # 0.0228227
    assert got.best.usd_per_month == pytest.approx(60.875 * 0.035848 * 1.2)  # 2.61870
    assert got.cheapest.location == "A"
    assert got.cheapest.usd_per_month == pytest.approx(60.875 * 0.035848)  # 2.18225
    assert got.cheapest.kg_co2e_per_month == pytest.approx(month_kwh * 300 / 1000)
    assert got.window is not None
    assert (got.window.location, got.window.start_hour_utc, got.window.duration_h) == ("B", 2, 2)
    assert got.window.g_co2e_per_kwh == pytest.approx(95)
    assert got.window.kg_co2e_per_month == pytest.approx(month_kwh * 95 / 1000)  # 0.0166781
    assert got.window.kg_co2e_per_month_now == pytest.approx(got.best.kg_co2e_per_month)

    answer = advice_module.to_json([got], REGIONS)
    (template,) = answer["templates"]
    assert template["best_location"]["location"] == "B"
    assert template["cheapest_location"]["location"] == "A"
    assert template["best_window"]["start_hour_utc"] == 2


def test_several_sessions_average_their_day() -> None:
    """Two sessions of the template, awake 1h and 3h a day: the fleet is awake 4h a day,
    one session 2h on average, so the window is 2 hours long."""
    model = Model(resources={"batch": ResourcesConf(cpu=1, memory=2**30)})
    (got,) = advise(
        [session("s1", {12: 1}), session("s2", {12: 1, 13: 1, 14: 1})], model, REGIONS, FACTORS
    )
    assert got.sessions == 2
    assert got.awake_hours_per_day == pytest.approx(2)
    assert got.best is not None
    assert got.best.location == "A"
    assert got.window is not None
    assert got.window.duration_h == 2


def test_never_awake_has_no_window_and_windows_wrap_past_midnight() -> None:
    """A template never awake gets choices (all zero) and no window. A window can wrap
    past midnight: the cleanest 3 hours of 22:00-00:59 at 10 g start at 22."""
    (idle,) = advise([session("s1", {})], Model(), REGIONS, FACTORS)
    assert idle.window is None
    assert idle.best is not None
    assert idle.best.kg_co2e_per_month == 0
    night = Profile(tuple(10.0 if h in (22, 23, 0) else 400.0 for h in range(24)), "n")
    now = advice_module.Choice("N", 0, 1.0, 400)
    window = best_window(night, 3, 1.0, now)
    assert (window.start_hour_utc, window.g_co2e_per_kwh) == (22, 10)
    assert best_window(night, 99, 1.0, now).duration_h == 24
