"""The HTML savings report (`siesta report --html FILE`): one self-contained file.

The numbers are the report's (`report.to_json`), the charts are matplotlib's SVG
(`charts`), inline; the page needs no network and no script. Every coefficient is
shown with its source at the bottom.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from html import escape

from .report import COLUMNS, SOURCES, WIDE_COLUMNS, Line, Report, mass, money, row_cells

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:1rem;color:#1d2733}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin-top:2rem}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:.6rem}
.kpi{border:1px solid #d5dbe3;border-radius:8px;padding:.6rem .8rem}
.kpi b{display:block;font-size:1.35rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{padding:.3rem .5rem;border-bottom:1px solid #e3e7ec;text-align:right}
th:first-child,td:first-child{text-align:left}
figure{margin:1rem 0}svg{max-width:100%;height:auto}
.notes{font-size:.85rem;color:#4a5868}
.scroll{overflow-x:auto}
"""


def _table(caption: str, first: str, lines: tuple[Line, ...], extra: Line | None = None) -> str:
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in (first, *COLUMNS, *WIDE_COLUMNS))
    rows = []
    for line in (*lines, *((extra,) if extra else ())):
        name = line.name if line.active else f"{line.name} (deleted)"
        cells = "".join(f"<td>{escape(c)}</td>" for c in row_cells(line, wide=True))
        rows.append(f'<tr><th scope="row">{escape(name)}</th>{cells}</tr>')
    return (
        f'<div class="scroll"><table><caption hidden>{escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def render(report: Report, charts: Mapping[str, str], title: str = "siesta savings") -> str:
    """The whole page."""
    total = report.total.costed
    conf = report.savings
    when = datetime.fromtimestamp(report.at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    kpis = [
        ("saved", money(total.saved_usd)),
        ("CO2e saved", mass(total.saved_kg_co2e)),
        ("energy saved", f"{total.saved_kwh:.3f} kWh"),
        ("awake share", f"{total.awake_share:.0%}"),
        ("wakes", str(total.wakes)),
    ]
    figures = "".join(
        f"<figure>{svg}</figure>"
        for name in ("timeline", "templates", "intensity")
        if (svg := charts.get(name))
    )
    notes = [
        f"Grid: {escape(report.profile.source)} (mean {report.profile.mean:.0f} g CO2e/kWh).",
        f"Prices: ${conf.prices.vcpu_hour} per vCPU-hour, ${conf.prices.gib_hour} per "
        f"GiB-hour ({escape(SOURCES['prices'])}).",
        f"Energy: {conf.energy.min_watts} to {conf.energy.max_watts} W per vCPU by "
        f"utilisation, {conf.energy.memory_kwh_per_gb_hour} kWh per GB-hour, PUE "
        f"{conf.energy.pue} ({escape(SOURCES['energy'])}).",
        f"Always-on is sized by {escape(conf.counterfactual)}; SCI: {escape(SOURCES['sci'])}.",
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>As of {when}, since each session was created.</p>"
        '<div class="kpis">'
        + "".join(f'<div class="kpi">{escape(k)}<b>{escape(v)}</b></div>' for k, v in kpis)
        + "</div>"
        + figures
        + "<h2>Templates</h2>"
        + _table("Savings by template", "template", report.templates, report.total)
        + "<h2>Sessions</h2>"
        + _table("Savings by session", "session", report.sessions)
        + '<h2>Sources</h2><ul class="notes">'
        + "".join(f"<li>{n}</li>" for n in notes)
        + "</ul></body></html>"
    )
