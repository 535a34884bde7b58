"""Follow the sun: where each template's sessions would be cleanest or cheapest, and
which hours of the day suit its work best.

Used by `siesta advise` and `GET /api/savings/advise`. Pure: from ledger accounts (when
sessions were awake, by UTC hour of day), the costing model (energy and dollars per
awake hour) and candidate regions (an intensity per hour of day and a price factor),
it answers in the shape of the Green Software Foundation Carbon Aware SDK's
best-location and best-window answers, with the expected $ and kg CO2e per month.

- **Activity.** A template's awake seconds per hour of day per day: each session's
  `awake_by_hour` divided by the days it was followed, summed over its sessions.
- **Per month** (365.25 / 12 = 30.4375 days): awake hours x kWh per awake hour x the
  region's intensity at those hours; awake hours x $ per awake hour x price factor.
- **Best location**: the least kg CO2e (then the least $). **Cheapest**: the least $.
- **Best window**: in the best location, the start hour of the run of D consecutive
  hours (D = a session's average awake hours per day, rounded up) with the lowest mean
  intensity: where batch work of that length would emit least.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from siesta.ledger import DAY, HOURS, Account

from .carbon import Profile
from .costing import Model, total

DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True, slots=True)
class Choice:
    """One candidate region for a template: its expected month."""

    location: str
    usd_per_month: float
    kg_co2e_per_month: float
    g_co2e_per_kwh: float


@dataclass(frozen=True, slots=True)
class Window:
    """The best hours for a template's work in a region."""

    location: str
    start_hour_utc: int
    duration_h: int
    g_co2e_per_kwh: float
    kg_co2e_per_month: float
    kg_co2e_per_month_now: float


@dataclass(frozen=True, slots=True)
class Advice:
    """What `advise` says about one template."""

    template: str
    sessions: int
    awake_hours_per_day: float
    kwh_per_month: float
    hours_of_day: tuple[float, ...]  # awake hours per month at each UTC hour of day
    locations: tuple[Choice, ...]  # best first
    window: Window | None

    @property
    def best(self) -> Choice | None:
        """The cleanest region (then the cheapest)."""
        return self.locations[0] if self.locations else None

    @property
    def cheapest(self) -> Choice | None:
        """The cheapest region (then the cleanest)."""
        if not self.locations:
            return None
        return min(self.locations, key=lambda c: (c.usd_per_month, c.kg_co2e_per_month))


def advise(
    accounts: Iterable[Account],
    model: Model,
    regions: Mapping[str, Profile],
    price_factors: Mapping[str, float],
) -> list[Advice]:
    """Advice for each template of `accounts` (closed up to now), by template name."""
    by_template: dict[str, list[Account]] = {}
    for account in accounts:
        by_template.setdefault(account.template, []).append(account)
    return [
        _one(name, group, model, regions, price_factors)
        for name, group in sorted(by_template.items())
    ]


def _one(
    template: str,
    accounts: list[Account],
    model: Model,
    regions: Mapping[str, Profile],
    price_factors: Mapping[str, float],
) -> Advice:
    per_day = _awake_per_day(accounts)
    month = tuple(seconds / 3600 * DAYS_PER_MONTH for seconds in per_day)
    awake_hours = sum(month)
    costed = total(model.cost(a) for a in accounts)
    hours_awake = costed.awake_seconds / 3600
    kwh_per_hour = costed.actual.kwh / hours_awake if hours_awake > 0 else 0.0
    usd_per_hour = costed.actual.usd / hours_awake if hours_awake > 0 else 0.0
    choices = []
    for name, profile in regions.items():
        grams = sum(h * kwh_per_hour * i for h, i in zip(month, profile.hourly, strict=True))
        kwh = awake_hours * kwh_per_hour
        choices.append(
            Choice(
                name,
                awake_hours * usd_per_hour * price_factors.get(name, 1.0),
                grams / 1000,
                grams / kwh if kwh > 0 else profile.mean,
            )
        )
    choices.sort(key=lambda c: (c.kg_co2e_per_month, c.usd_per_month))
    sessions = len(accounts)
    per_session = awake_hours / DAYS_PER_MONTH / sessions if sessions else 0.0
    window = None
    if choices and awake_hours > 0:
        best = choices[0]
        window = best_window(
            regions[best.location],
            math.ceil(per_session - 1e-9),
            awake_hours * kwh_per_hour,
            best,
        )
    return Advice(
        template,
        sessions,
        per_session,
        awake_hours * kwh_per_hour,
        month,
        tuple(choices),
        window,
    )


def _awake_per_day(accounts: Iterable[Account]) -> tuple[float, ...]:
    """Awake seconds per day at each UTC hour, summed over sessions."""
    per_day = [0.0] * HOURS
    for account in accounts:
        days = account.tracked_seconds / DAY
        if days <= 0:
            continue
        for h, seconds in enumerate(account.awake_by_hour):
            per_day[h] += seconds / days
    return tuple(per_day)


def best_window(profile: Profile, hours: int, kwh_per_month: float, now: Choice) -> Window:
    """The `hours`-long run of consecutive hours (wrapping past midnight) with the lowest
    mean intensity; the earliest start wins a tie."""
    length = max(1, min(HOURS, hours))
    best_start, best_mean = 0, math.inf
    for start in range(HOURS):
        mean = sum(profile.hourly[(start + i) % HOURS] for i in range(length)) / length
        if mean < best_mean - 1e-9:
            best_start, best_mean = start, mean
    return Window(
        now.location,
        best_start,
        length,
        best_mean,
        kwh_per_month * best_mean / 1000,
        now.kg_co2e_per_month,
    )


def to_json(advice: list[Advice], regions: Mapping[str, Profile]) -> dict[str, Any]:
    """The advice as JSON (the Carbon Aware SDK's best-location / best-window shape)."""
    return {
        "days_per_month": DAYS_PER_MONTH,
        "regions": {
            name: {"g_co2e_per_kwh": p.mean, "hourly": list(p.hourly), "source": p.source}
            for name, p in regions.items()
        },
        "templates": [_advice_json(a) for a in advice],
    }


def _choice_json(choice: Choice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    return {
        "location": choice.location,
        "usd_per_month": choice.usd_per_month,
        "kg_co2e_per_month": choice.kg_co2e_per_month,
        "g_co2e_per_kwh": choice.g_co2e_per_kwh,
    }


def _advice_json(advice: Advice) -> dict[str, Any]:
    window = advice.window
    return {
        "template": advice.template,
        "sessions": advice.sessions,
        "awake_hours_per_day": advice.awake_hours_per_day,
        "kwh_per_month": advice.kwh_per_month,
        "awake_hours_per_month_by_hour": list(advice.hours_of_day),
        "locations": [_choice_json(c) for c in advice.locations],
        "best_location": _choice_json(advice.best),
        "cheapest_location": _choice_json(advice.cheapest),
        "best_window": None
        if window is None
        else {
            "location": window.location,
            "start_hour_utc": window.start_hour_utc,
            "duration_h": window.duration_h,
            "g_co2e_per_kwh": window.g_co2e_per_kwh,
            "kg_co2e_per_month": window.kg_co2e_per_month,
            "kg_co2e_per_month_now": window.kg_co2e_per_month_now,
        },
    }


def render(advice: list[Advice]) -> RenderableType:
    """The advice as Rich tables: per template, each region's month, best first."""
    parts: list[RenderableType] = []
    for item in advice:
        table = Table(
            title=f"{item.template}: {item.sessions} session(s), "
            f"{item.awake_hours_per_day:.2f} awake h a day each, "
            f"{item.kwh_per_month:.3f} kWh a month",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for name in ("region", "$ / month", "kg CO2e / month", "g CO2e / kWh", ""):
            table.add_column(name, justify="left" if name == "region" else "right")
        cheapest = item.cheapest
        for choice in item.locations:
            marks = []
            if choice is item.best:
                marks.append("cleanest")
            if cheapest is not None and choice.location == cheapest.location:
                marks.append("cheapest")
            table.add_row(
                choice.location,
                f"{choice.usd_per_month:.2f}",
                f"{choice.kg_co2e_per_month:.3f}",
                f"{choice.g_co2e_per_kwh:.0f}",
                ", ".join(marks),
            )
        parts.append(table)
        window = item.window
        if window is not None:
            end = (window.start_hour_utc + window.duration_h) % HOURS
            parts.append(
                Text(
                    f"best hours for its work in {window.location}: "
                    f"{window.start_hour_utc:02d}:00-{end:02d}:00 UTC "
                    f"({window.g_co2e_per_kwh:.0f} g CO2e/kWh): "
                    f"{window.kg_co2e_per_month:.3f} kg CO2e a month instead of "
                    f"{window.kg_co2e_per_month_now:.3f} at its present hours"
                )
            )
    if not parts:
        parts.append(Text("no sessions yet: nothing to advise on"))
    return Group(*parts)
