"""Grid carbon intensity: the shipped table of yearly averages, and hourly profiles.

Used by `settings` (to check `savings.region` and read hourly CSVs when the config
loads), `costing` (kg CO2e) and `advise` (comparing regions). A profile is 24 values,
one per UTC hour of day, in grams of CO2e per kWh: a yearly average is the same value
24 times; an hourly CSV gives each hour its own average.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path

HOURS = 24

TABLE_SOURCE = (
    "Our World in Data, carbon intensity of electricity generation (Ember, Yearly "
    "Electricity Data 2025; Energy Institute, Statistical Review of World Energy 2025), "
    "CC BY 4.0"
)
"""Where the shipped yearly table comes from (its CSV header says more)."""


@dataclass(frozen=True, slots=True)
class GridRow:
    """One row of the shipped table."""

    code: str
    name: str
    year: int
    g_per_kwh: float
    source: str


@dataclass(frozen=True, slots=True)
class Profile:
    """Grams of CO2e per kWh for each UTC hour of day, and where the numbers come from."""

    hourly: tuple[float, ...]
    source: str

    @property
    def mean(self) -> float:
        """The average over the day."""
        return sum(self.hourly) / HOURS

    @classmethod
    def flat(cls, g_per_kwh: float, source: str) -> Profile:
        """The same intensity at every hour (a yearly average)."""
        return cls((g_per_kwh,) * HOURS, source)


@cache
def table() -> dict[str, GridRow]:
    """The shipped yearly averages, by code (ISO 3166-1 alpha-2, EU, WORLD)."""
    text = resources.files("siesta.savings").joinpath("data/grid_intensity.csv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    rows = {}
    for item in csv.DictReader(lines):
        rows[item["code"]] = GridRow(
            item["code"],
            item["name"],
            int(item["year"]),
            float(item["g_co2e_per_kwh"]),
            item["source"],
        )
    return rows


def yearly(code: str) -> Profile:
    """The flat profile of a table row; `KeyError` with the known codes if there is none."""
    row = table().get(code.upper())
    if row is None:
        raise KeyError(f"no grid intensity for {code!r} (known: {', '.join(sorted(table()))})")
    return Profile.flat(row.g_per_kwh, f"{row.name} {row.year}: {row.source}")


class IntensityFileError(ValueError):
    """An hourly intensity CSV that cannot be used; the message names the file and line."""


def read_hourly(path: Path) -> Profile:
    """The profile in an hourly intensity CSV (see `parse_hourly`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise IntensityFileError(f"{path}: {exc.strerror or exc}") from None
    return parse_hourly(text, str(path))


def parse_hourly(text: str, source: str) -> Profile:
    """The average intensity per UTC hour of day from CSV rows `when,g_co2e_per_kwh`.

    `when` is an hour of day (0 to 23) or a time (ISO 8601, e.g. an hourly export of
    Electricity Maps or a grid operator; no offset means UTC). A header row, blank
    lines and lines starting with # are skipped. Every hour of day needs a value.
    """
    sums, counts = [0.0] * HOURS, [0] * HOURS
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader(io.StringIO(line)))
        where = f"{source}:{number}"
        if len(fields) < 2:
            raise IntensityFileError(f"{where}: expected when,g_co2e_per_kwh")
        value = _intensity(fields[1].strip())
        if value is None:
            if not any(counts) and number == _first_line(text):
                continue  # a header
            raise IntensityFileError(f"{where}: {fields[1].strip()!r} is not a number >= 0")
        hour = _hour(fields[0].strip(), where)
        sums[hour] += value
        counts[hour] += 1
    missing = [str(h) for h in range(HOURS) if counts[h] == 0]
    if missing:
        raise IntensityFileError(f"{source}: no value for the UTC hour(s) {', '.join(missing)}")
    hourly = tuple(s / n for s, n in zip(sums, counts, strict=True))
    return Profile(hourly, f"hourly averages from {source}")


def _first_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            return number
    return 0


def _intensity(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _hour(text: str, where: str) -> int:
    if text.isdigit():
        hour = int(text)
        if hour < HOURS:
            return hour
        raise IntensityFileError(f"{where}: hour {hour} is not 0 to 23")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise IntensityFileError(
            f"{where}: {text!r} is neither an hour (0 to 23) nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).hour
