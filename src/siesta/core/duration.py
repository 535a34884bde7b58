"""Durations as people write them ("500ms", "15m", "1h30m") and as siesta shows them.

`siesta.config` parses every timeout with `parse_duration`; the CLI tables print
them with `format_duration`. Pure functions: no I/O.
"""

from __future__ import annotations

import math
import re

UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
"""Seconds per unit, largest first; a duration names its units in this order."""

_NUMBER = r"\d+(?:\.\d+)?"
_PLAIN = re.compile(_NUMBER)
_PARTS = re.compile(rf"(?:{_NUMBER}(?:ms|[dhms]))+")
_PART = re.compile(rf"({_NUMBER})(ms|[dhms])")
_RANK = {unit: rank for rank, unit in enumerate(UNITS)}

_HINT = "use a number with a unit, e.g. 500ms, 10s, 15m, 2h"


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`: a number of seconds, or a string like "500ms", "1h30m".

    Raises `ValueError` for anything else, and for negative or infinite durations.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a duration: {_HINT}")
    if isinstance(value, str):
        return _parse_text(value)
    return _checked(float(value), value)


def _parse_text(text: str) -> float:
    """Seconds in a duration string, a plain number meaning seconds."""
    if text.startswith("-"):
        raise ValueError(f"{text!r} is not a duration: it must not be negative")
    if _PLAIN.fullmatch(text):
        return _checked(float(text), text)
    if not _PARTS.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration: {_HINT}")
    return _checked(_sum_parts(text), text)


def _sum_parts(text: str) -> float:
    """Add up "1h30m" part by part, refusing units out of order or repeated."""
    total, last_rank = 0.0, -1
    for number, unit in _PART.findall(text):
        if _RANK[unit] <= last_rank:
            raise ValueError(
                f"{text!r} is not a duration: write each unit once, largest first, e.g. 1h30m"
            )
        last_rank = _RANK[unit]
        total += float(number) * UNITS[unit]
    return total


def _checked(seconds: float, original: object) -> float:
    """`seconds` if it is a usable duration, else a `ValueError` naming `original`."""
    if not math.isfinite(seconds):
        raise ValueError(f"{original!r} is not a duration: it must be a finite number")
    if seconds < 0:
        raise ValueError(f"{original!r} is not a duration: it must not be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """A compact human string for `seconds`: "1h30m", "15m", "1.5s", "250ms".

    Under a second shows milliseconds; under a minute keeps one decimal; longer
    durations are rounded to whole seconds. `parse_duration` reads the result back.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"{seconds!r} is not a finite number of seconds")
    if seconds < 0:
        return "-" + format_duration(-seconds)
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    tenths = round(seconds * 10)
    if tenths < 600 and tenths % 10:
        return f"{tenths / 10:g}s"
    return _compound(round(seconds))


def _compound(total: int) -> str:
    """Whole seconds as "1d2h", "1h30m", "45s": the non-zero units, largest first."""
    parts: list[str] = []
    for unit in ("d", "h", "m", "s"):
        count, total = divmod(total, int(UNITS[unit]))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


_CEL_DURATION = re.compile(r"""\bduration\(\s*(["'])([^"'\\]*)\1\s*\)""")


class DurationLiteralError(ValueError):
    """A `duration("...")` in a rule that the config's grammar does not read; `offset` is
    where its text starts in the rule."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def cel_durations(source: str) -> str:
    """`source` with each `duration("...")` written so that CEL reads it as the config
    does: one grammar for both ("1d" becomes "24h"; CEL has no days). Raises
    `DurationLiteralError` for a literal the grammar refuses."""

    def rewrite(match: re.Match[str]) -> str:
        quote, text = match[1], match[2]
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise DurationLiteralError(f'duration("{text}"): {exc}', match.start(2)) from None
        if "d" not in text:
            return match[0]  # CEL reads it as it is: keep the rule as written
        whole = f"{seconds:f}".rstrip("0").rstrip(".")  # never an exponent: CEL wants digits
        return f"duration({quote}{whole}s{quote})"

    return _CEL_DURATION.sub(rewrite, source)
