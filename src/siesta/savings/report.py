"""The savings report: per session, per template and in total, as JSON and as text.

One shape serves `GET /api/savings`, `siesta report --json`, the text tables, the HTML
report and the dashboard. Built from ledger accounts (`siesta.ledger`) by the costing
model; pure apart from reading the clock the caller passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from siesta.core.model import Transition
from siesta.ledger import HOURS, RUNNING, Account

from . import carbon
from .costing import Costed, Model, total
from .settings import CCF_METHOD, OPENCOST_DEFAULTS, SavingsConf

SOURCES = {
    "prices": OPENCOST_DEFAULTS + " unless configured",
    "energy": CCF_METHOD + " unless configured",
    "grid": carbon.TABLE_SOURCE,
    "sci": "Green Software Foundation, Software Carbon Intensity specification: "
    "SCI = (E x I + M) per R, here R = one awake session-hour",
}
"""Where the report's numbers come from (also in the JSON and the HTML)."""


@dataclass(frozen=True, slots=True)
class Line:
    """One row of the report: a session, a template or the total."""

    name: str
    template: str
    costed: Costed
    active: bool = True
    awake: bool = False


@dataclass(frozen=True, slots=True)
class Report:
    """Sessions, templates and the total at `at`, with what the numbers rest on."""

    at: float
    sessions: tuple[Line, ...]
    templates: tuple[Line, ...]
    total: Line
    region: str
    profile: carbon.Profile
    savings: SavingsConf
    awake_by_hour: tuple[float, ...]


def build(
    accounts: Iterable[Account],
    savings: SavingsConf,
    model: Model,
    at: float,
    active: Iterable[str] | None = None,
) -> Report:
    """The report of `accounts` (closed up to `at`); `active` names the sessions that
    still exist (None: all of them)."""
    accounts = sorted(accounts, key=lambda a: a.session)
    live = None if active is None else set(active)
    sessions = tuple(
        Line(
            a.session,
            a.template,
            model.cost(a),
            active=live is None or a.session in live,
            awake=a.running,
        )
        for a in accounts
    )
    by_template: dict[str, list[Costed]] = {}
    for line in sessions:
        by_template.setdefault(line.template, []).append(line.costed)
    templates = tuple(Line(t, t, total(c)) for t, c in sorted(by_template.items()))
    by_hour = [0.0] * HOURS
    for account in accounts:
        for h, awake in enumerate(account.awake_by_hour):
            by_hour[h] += awake
    return Report(
        at,
        sessions,
        templates,
        Line("total", "", total(line.costed for line in sessions)),
        savings.region,
        savings.profile,
        savings,
        tuple(by_hour),
    )


# -- JSON ---------------------------------------------------------------------------


def line_json(line: Line) -> dict[str, Any]:
    """A row of the report as JSON: times in seconds, money in USD, mass in kg CO2e."""
    c = line.costed
    p50, p95 = c.wake_times.quantile(0.5), c.wake_times.quantile(0.95)
    return {
        "awake_s": c.awake_seconds,
        "asleep_s": c.asleep_seconds,
        "awake_share": c.awake_share,
        "wakes": c.wakes,
        "sleeps": c.sleeps,
        "wake_p50_s": p50,
        "wake_p95_s": p95,
        "cpu_seconds": c.cpu_seconds,
        "memory_gib_hours": c.memory_gib_hours,
        "basis": c.basis,
        "vcpu_hours": c.actual.vcpu_hours,
        "gib_hours": c.actual.gib_hours,
        "cost_usd": c.actual.usd,
        "always_on_usd": c.always_on.usd,
        "saved_usd": c.saved_usd,
        "kwh": c.actual.kwh,
        "always_on_kwh": c.always_on.kwh,
        "saved_kwh": c.saved_kwh,
        "kg_co2e": c.actual.kg_co2e,
        "always_on_kg_co2e": c.always_on.kg_co2e,
        "saved_kg_co2e": c.saved_kg_co2e,
        "embodied_kg_co2e": c.actual.embodied_kg,
        "sci_g_per_session_hour": c.sci_g_per_session_hour,
    }


def to_json(report: Report) -> dict[str, Any]:
    """The whole report as JSON."""
    conf = report.savings
    return {
        "at": report.at,
        "sessions": [
            {"id": s.name, "template": s.template, "active": s.active, "awake": s.awake}
            | line_json(s)
            for s in report.sessions
        ],
        "templates": [
            {"template": t.name, "sessions": t.costed.sessions} | line_json(t)
            for t in report.templates
        ],
        "total": {"sessions": report.total.costed.sessions} | line_json(report.total),
        "region": {
            "code": report.region,
            "g_co2e_per_kwh": report.profile.mean,
            "hourly": conf.hourly is not None,
            "source": report.profile.source,
        },
        "intensity_by_hour": list(report.profile.hourly),
        "awake_by_hour_s": list(report.awake_by_hour),
        "prices": conf.prices.model_dump(),
        "energy": conf.energy.model_dump(),
        "embodied": None if conf.embodied is None else conf.embodied.model_dump(),
        "counterfactual": conf.counterfactual,
        "sources": SOURCES,
    }


# -- text ---------------------------------------------------------------------------


def hours(seconds: float) -> str:
    """Seconds as hours with two decimals."""
    return f"{seconds / 3600:.2f}"


def money(usd: float) -> str:
    """Dollars, with more decimals for small sums (a session's savings are cents)."""
    return f"${usd:,.2f}" if abs(usd) >= 100 else f"${usd:.4f}"


def mass(kg: float) -> str:
    """kg CO2e, or g when under a kilogram."""
    return f"{kg:.2f} kg" if abs(kg) >= 1 else f"{kg * 1000:.1f} g"


def seconds(value: float | None) -> str:
    """A wake time, or a dash."""
    return "-" if value is None else f"{value:.2f}s"


COLUMNS = ("awake h", "of h", "share", "wakes", "wake p50", "wake p95", "cost", "saved $")
WIDE_COLUMNS = ("always-on", "CO2e saved", "SCI g/h")
"""The columns of a row of the text report, and the HTML's (it has room for more)."""


def row_cells(line: Line, wide: bool = False) -> list[str]:
    """A row of the report as text cells: `COLUMNS`, then `WIDE_COLUMNS` when `wide`
    (else only CO2e saved)."""
    c = line.costed
    cells = [
        hours(c.awake_seconds),
        hours(c.tracked_seconds),
        f"{c.awake_share:.0%}",
        str(c.wakes),
        seconds(c.wake_times.quantile(0.5)),
        seconds(c.wake_times.quantile(0.95)),
        money(c.actual.usd),
        money(c.saved_usd),
    ]
    if not wide:
        return [*cells, mass(c.saved_kg_co2e)]
    sci = c.sci_g_per_session_hour
    return [
        *cells,
        money(c.always_on.usd),
        mass(c.saved_kg_co2e),
        "-" if sci is None else f"{sci:.1f}",
    ]


def _table(title: str, first: str, lines: Sequence[Line], extra: Line | None = None) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column(first, no_wrap=True)
    for name in (*COLUMNS, "CO2e saved"):
        table.add_column(name, justify="right")
    for line in lines:
        name = line.name if line.active else f"{line.name} (deleted)"
        table.add_row(name, *row_cells(line))
    if extra is not None:
        table.add_section()
        table.add_row(Text(extra.name, style="bold"), *row_cells(extra))
    return table


def render(report: Report) -> RenderableType:
    """The report as Rich tables: sessions, templates, and what the numbers rest on."""
    conf = report.savings
    notes = Text(
        f"grid: {report.profile.source} (mean {report.profile.mean:.0f} g CO2e/kWh); "
        f"prices: ${conf.prices.vcpu_hour}/vCPU-h, ${conf.prices.gib_hour}/GiB-h; "
        f"always-on sized by {conf.counterfactual}; energy: CCF, PUE {conf.energy.pue}",
        style="dim",
    )
    return Group(
        _table("Sessions", "session", report.sessions),
        _table("Templates", "template", report.templates, report.total),
        notes,
    )


def awake_spans(
    events: Iterable[Transition],
    start: float,
    end: float,
    running: Mapping[str, bool],
) -> dict[str, list[tuple[float, float]]]:
    """Each session's awake spans within [start, end], for the timeline chart.

    `events` are those after `start`; a session's state before its first one is that
    event's old state, and a session without events kept its state now (`running`)
    all along.
    """
    by_session: dict[str, list[Transition]] = {sid: [] for sid in running}
    for event in events:
        by_session.setdefault(event.session, []).append(event)
    spans: dict[str, list[tuple[float, float]]] = {}
    for sid, found in by_session.items():
        found.sort(key=lambda e: e.at)
        began = start if (found[0].old in RUNNING if found else running.get(sid)) else None
        spans[sid] = []
        for event in found:
            at = min(max(event.at, start), end)
            if event.new in RUNNING and began is None:
                began = at
            elif event.new not in RUNNING and began is not None:
                spans[sid].append((began, at))
                began = None
        if began is not None:
            spans[sid].append((began, end))
    return spans
