"""The savings charts, drawn with matplotlib as SVG text.

Used by the HTML report (`siesta report --html`, charts inline) and the dashboard
(/ui/charts/NAME.svg). matplotlib is the plotting library because it is the
well-kept standard, draws SVG without a display or a browser, and needs no network
or JavaScript: the charts are the same in a file mailed around and on the dashboard.
It is an optional dependency (`pip install 'siesta[charts]'`), imported only here and
only when a chart is drawn; `ChartsUnavailable` says how to get it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .report import Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Span = tuple[float, float]
"""An awake span: start and end, seconds since the epoch."""

AWAKE, SAVED, ALWAYS_ON, GRID = "#2a9d8f", "#e9c46a", "#8d99ae", "#264653"
INSTALL_HINT = "the charts need matplotlib: pip install 'siesta[charts]'"


class ChartsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _figure(width: float, height: float) -> Figure:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ChartsUnavailable(INSTALL_HINT) from None
    matplotlib.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: smaller, selectable, accessible
            "svg.hashsalt": "siesta",  # the same chart gives the same SVG
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Figure, prefix: str, label: str) -> str:
    """The figure as SVG markup, ids prefixed (several charts share one page), titled."""
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'id="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    return text.replace("<svg ", f'<svg role="img" aria-label="{label}" ', 1)


def templates(report: Report) -> str:
    """Savings by template: cost as run against always-on ($), and kg CO2e saved."""
    figure = _figure(7.5, 0.5 + 0.45 * max(2, len(report.templates)))
    money, carbon = figure.subplots(1, 2, sharey=True)
    names = [t.name for t in report.templates] or ["(none)"]
    actual = [t.costed.actual.usd for t in report.templates] or [0.0]
    always = [t.costed.always_on.usd for t in report.templates] or [0.0]
    saved_kg = [t.costed.saved_kg_co2e for t in report.templates] or [0.0]
    rows = range(len(names))
    money.barh(rows, always, color=ALWAYS_ON, label="always-on")
    money.barh(rows, actual, color=AWAKE, label="with siesta")
    money.set_yticks(list(rows), names)
    money.invert_yaxis()
    money.set_xlabel("USD")
    money.set_title("Cost", loc="left")
    money.legend(loc="lower right", frameon=False)
    carbon.barh(rows, saved_kg, color=SAVED)
    carbon.set_xlabel("kg CO2e")
    carbon.set_title("Emissions saved", loc="left")
    return _svg(figure, "templates", "Cost with siesta against always-on, by template")


def intensity(report: Report) -> str:
    """Grid intensity by UTC hour of day, with the sessions' awake hours behind it."""
    figure = _figure(7.5, 2.6)
    grid = figure.subplots()
    hours = list(range(24))
    awake = figure.axes[0].twinx()
    awake.bar(hours, [s / 3600 for s in report.awake_by_hour], color=AWAKE, alpha=0.35)
    awake.set_ylabel("awake hours (all sessions)")
    awake.spines["right"].set_visible(True)
    grid.plot(hours, list(report.profile.hourly), color=GRID, marker="o", markersize=3)
    grid.set_zorder(awake.get_zorder() + 1)
    grid.patch.set_visible(False)
    grid.set_xticks(hours[::3])
    grid.set_xlabel("hour of day (UTC)")
    grid.set_ylabel("g CO2e / kWh")
    grid.set_ylim(bottom=0)
    grid.set_title(f"Grid intensity: {report.profile.source}", loc="left", fontsize=8)
    return _svg(figure, "intensity", "Grid carbon intensity and awake hours by hour of day")


def timeline(spans: Mapping[str, Sequence[Span]], start: float, end: float) -> str:
    """Awake spans of each session between `start` and `end` (UTC times)."""
    names = sorted(spans) or ["(none)"]
    figure = _figure(7.5, 0.6 + 0.32 * len(names))
    axes = figure.subplots()
    for row, name in enumerate(names):
        bars = [(s, e - s) for s, e in spans.get(name, ()) if e > s]
        axes.broken_barh(bars, (row - 0.35, 0.7), color=AWAKE)
    axes.set_yticks(list(range(len(names))), names)
    axes.invert_yaxis()
    axes.set_xlim(start, end)
    ticks = [start + (end - start) * i / 6 for i in range(7)]
    axes.set_xticks(ticks, [_clock(t, end - start) for t in ticks])
    axes.set_xlabel("UTC")
    axes.set_title("Awake", loc="left")
    return _svg(figure, "timeline", "When each session was awake")


def _clock(at: float, span: float) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%H:%M" if span <= 86400 else "%m-%d %H:%M")


def all_charts(
    report: Report, spans: Mapping[str, Sequence[Span]], start: float, end: float
) -> dict[str, Any]:
    """The three charts, by name."""
    return {
        "timeline": timeline(spans, start, end),
        "templates": templates(report),
        "intensity": intensity(report),
    }
