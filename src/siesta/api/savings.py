"""`/api/savings`: what sleeping saved, and `/api/savings/advise`: where and when.

Both read the live ledger (`siesta.savings.keeper`), never the event log, so they
answer in O(sessions) however long siesta has run. The numbers and their shapes are
those of `siesta report --json` and `siesta advise --json` (`siesta.savings.report`,
`siesta.savings.advise`), validated into the models below for the OpenAPI document.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from siesta.api.deps import Svc
from siesta.api.errors import ApiProblem, responses
from siesta.savings import advise as advising
from siesta.savings import report as reporting
from siesta.savings.costing import model_of

router = APIRouter(prefix="/api/savings", tags=["savings"])


class Figures(BaseModel):
    """Time, wakes, resources, money, energy and CO2e of a session, a template or all.

    Money in US dollars, energy in kWh, emissions in kg CO2e; "always_on" is what the
    same sessions would have cost had they never slept; "saved" is the difference.
    """

    awake_s: float = Field(description="seconds a backend ran (waking, awake, stopping)")
    asleep_s: float = Field(description="seconds asleep")
    awake_share: float = Field(description="awake_s / (awake_s + asleep_s)")
    wakes: int
    sleeps: int
    wake_p50_s: float | None = Field(description="median wake time (within 1 %)")
    wake_p95_s: float | None = Field(description="95th percentile wake time (within 1 %)")
    cpu_seconds: float = Field(description="CPU time the backend used (measured)")
    memory_gib_hours: float = Field(description="memory the backend held (measured)")
    basis: str = Field(description="how a backend is sized: requests, peak, none or mixed")
    vcpu_hours: float
    gib_hours: float
    cost_usd: float
    always_on_usd: float
    saved_usd: float
    kwh: float
    always_on_kwh: float
    saved_kwh: float
    kg_co2e: float
    always_on_kg_co2e: float
    saved_kg_co2e: float
    embodied_kg_co2e: float = Field(description="of kg_co2e, the embodied part (SCI's M)")
    sci_g_per_session_hour: float | None = Field(
        description="Software Carbon Intensity: g CO2e per awake session-hour"
    )


class SessionSavings(Figures):
    """One session's savings."""

    id: str
    template: str
    active: bool = Field(description="false for a deleted session (its record is kept)")
    awake: bool = Field(description="whether its backend runs now")


class TemplateSavings(Figures):
    """The savings of a template's sessions."""

    template: str
    sessions: int


class TotalSavings(Figures):
    """The savings of every session."""

    sessions: int


class Region(BaseModel):
    """Where the backends run, and the grid intensity used."""

    code: str = Field(description="savings.region: ISO 3166-1 alpha-2, EU or WORLD")
    g_co2e_per_kwh: float = Field(description="the day's mean intensity")
    hourly: bool = Field(description="whether an hourly intensity CSV is used")
    source: str


class SavingsReport(BaseModel):
    """What sleeping saved, with every coefficient and where it comes from."""

    at: float = Field(description="seconds since the epoch")
    sessions: list[SessionSavings]
    templates: list[TemplateSavings]
    total: TotalSavings
    region: Region
    intensity_by_hour: list[float] = Field(description="g CO2e/kWh at each UTC hour")
    awake_by_hour_s: list[float] = Field(description="awake seconds at each UTC hour")
    prices: dict[str, float]
    energy: dict[str, float]
    embodied: dict[str, float] | None
    counterfactual: str = Field(description="how an always-on backend is sized")
    sources: dict[str, str]


class Choice(BaseModel):
    """A candidate region for a template, per month."""

    location: str
    usd_per_month: float
    kg_co2e_per_month: float
    g_co2e_per_kwh: float = Field(description="intensity at the hours the template is awake")


class Window(BaseModel):
    """The best hours of the day for a template's work."""

    location: str
    start_hour_utc: int
    duration_h: int
    g_co2e_per_kwh: float
    kg_co2e_per_month: float
    kg_co2e_per_month_now: float = Field(description="at the hours it runs now")


class TemplateAdvice(BaseModel):
    """Where and when one template's sessions would emit least."""

    template: str
    sessions: int
    awake_hours_per_day: float = Field(description="per session, on average")
    kwh_per_month: float
    awake_hours_per_month_by_hour: list[float]
    locations: list[Choice] = Field(description="every candidate, cleanest first")
    best_location: Choice | None
    cheapest_location: Choice | None
    best_window: Window | None


class Advice(BaseModel):
    """`siesta advise`: per template, the best location and the best window."""

    days_per_month: float
    regions: dict[str, Any]
    templates: list[TemplateAdvice]


def _ledger(svc: Svc) -> Any:
    if svc.ledger is None or svc.config is None:
        raise ApiProblem(503, "the savings ledger is not running")
    return svc.ledger


@router.get(
    "",
    summary="What sleeping saved: per session, per template and in total, against always-on",
    responses=responses(e503="the ledger is not running"),
)
async def savings(svc: Svc) -> SavingsReport:
    ledger = _ledger(svc)
    assert svc.config is not None
    now = time.time()
    built = reporting.build(
        ledger.snapshot(now),
        svc.config.savings,
        model_of(svc.config),
        now,
        active=svc.lifecycle.sessions,
    )
    return SavingsReport.model_validate(reporting.to_json(built))


@router.get(
    "/advise",
    summary="Where each template's sessions would be cleanest and cheapest, and when",
    responses=responses(e503="the ledger is not running"),
)
async def advise(svc: Svc) -> Advice:
    ledger = _ledger(svc)
    assert svc.config is not None
    conf = svc.config.savings
    regions = conf.candidates()
    factors = {name: conf.price_factor(name) for name in regions}
    found = advising.advise(ledger.snapshot(), model_of(svc.config), regions, factors)
    return Advice.model_validate(advising.to_json(found, regions))
