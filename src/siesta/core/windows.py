"""Weekly time windows, as py-kube-downscaler writes them: "Mon-Fri 08:00-18:00".

Policies call them through the CEL function `in_window(spec, tz)`; the policy
also asks `next_change` when the answer flips, to schedule its next check. Pure
functions of a spec and an aware `datetime`: no I/O, no clock of their own.

A spec is a comma-separated list of windows, each `DAYS HH:MM-HH:MM`, where DAYS
is one day (`Sat`) or a range (`Mon-Fri`, `Fri-Mon` wraps over the weekend). A
window whose end is not after its start runs across midnight: `Fri-Sat 22:00-02:00`
opens on Friday and on Saturday at 22:00, and each time closes at 02:00 the next
morning. `24:00` means the end of the day. Times are wall-clock times in the
given IANA time zone, so `08:00` stays 08:00 local across daylight-saving changes;
a window edge in the hour skipped in spring takes effect when the clock reaches
the far side of the gap.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names in `datetime.weekday()` order; specs may write them in any case."""

_WINDOW = re.compile(
    r"^\s*(?P<first>[A-Za-z]{3})(?:\s*-\s*(?P<last>[A-Za-z]{3}))?"
    r"\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)
_DAY = timedelta(days=1)


class WindowError(ValueError):
    """A window spec or time zone that cannot be read; the message says how to write it."""


@dataclass(frozen=True, slots=True)
class Window:
    """One weekly window: the weekdays it opens on (0 = Monday) and its wall-clock span.

    `start` and `end` are minutes since midnight; `end <= start` means the window
    closes on the next day.
    """

    days: frozenset[int]
    start: int
    end: int

    def contains(self, local: datetime) -> bool:
        """Whether the naive-or-aware local wall-clock time `local` is inside this window."""
        minute = local.hour * 60 + local.minute + local.second / 60 + local.microsecond / 6e7
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        yesterday = (day - 1) % 7
        return (day in self.days and minute >= self.start) or (
            yesterday in self.days and minute < self.end
        )


@functools.lru_cache(maxsize=256)
def parse_windows(spec: str) -> tuple[Window, ...]:
    """The windows of `spec` ("Mon-Fri 08:00-18:00, Sat 10:00-12:00"); `WindowError` if bad."""
    parts = [part for part in spec.split(",") if part.strip()]
    if not parts:
        raise WindowError(f"{spec!r} has no window: write e.g. 'Mon-Fri 08:00-18:00'")
    return tuple(_parse_one(part.strip(), spec) for part in parts)


def _parse_one(text: str, spec: str) -> Window:
    match = _WINDOW.match(text)
    if match is None:
        raise WindowError(
            f"{text!r} in {spec!r} is not a window: write DAYS HH:MM-HH:MM, "
            "e.g. 'Mon-Fri 08:00-18:00' or 'Sat 22:00-02:00'"
        )
    first = _day(match["first"], spec)
    last = first if match["last"] is None else _day(match["last"], spec)
    days = frozenset((first + offset) % 7 for offset in range((last - first) % 7 + 1))
    return Window(days, _minutes(match["start"], spec), _minutes(match["end"], spec))


def _day(name: str, spec: str) -> int:
    try:
        return DAYS.index(name.lower())
    except ValueError:
        raise WindowError(
            f"{name!r} in {spec!r} is not a day: use Mon, Tue, Wed, Thu, Fri, Sat or Sun"
        ) from None


def _minutes(text: str, spec: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise WindowError(f"{text!r} in {spec!r} is not a time of day: use 00:00 to 24:00")
    return hours * 60 + minutes


@functools.lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` ("Europe/Paris", "UTC"); `WindowError` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(
            f"{name!r} is not a known time zone: use an IANA name, e.g. Europe/Paris or UTC"
        ) from None


def in_window(now: datetime, spec: str, tz: str = "UTC") -> bool:
    """Whether the aware time `now`, read on the clocks of `tz`, falls in a window of `spec`."""
    local = now.astimezone(zone(tz))
    return any(window.contains(local) for window in parse_windows(spec))


def next_change(now: datetime, spec: str, tz: str = "UTC") -> datetime | None:
    """The first instant after `now` at which `in_window(..., spec, tz)` gives another answer.

    None when it never changes (e.g. "Mon-Sun 00:00-24:00"). Looks at the window
    edges of the coming eight days, turned into instants in `tz`.
    """
    zone_info, windows = zone(tz), parse_windows(spec)
    today = now.astimezone(zone_info).date()
    current = in_window(now, spec, tz)
    edges = sorted(
        edge
        for window in windows
        for offset in range(-1, 9)
        for edge in _edges(window, today + timedelta(days=offset), zone_info)
        if edge > now
    )
    for edge in edges:
        if in_window(edge, spec, tz) != current:
            return edge
    return None


def _edges(window: Window, day: date, zone_info: ZoneInfo) -> list[datetime]:
    """The instants `window` opens and closes when it opens on `day` (if it does)."""
    if day.weekday() not in window.days:
        return []
    end_day = day if window.start < window.end else day + _DAY
    return [
        *_instants(day, window.start, zone_info),
        *_instants(end_day, window.end, zone_info),
    ]


def _instants(day: date, minutes: int, zone_info: ZoneInfo) -> list[datetime]:
    """The instants the clocks of `zone_info` show `minutes` past midnight of `day`.

    Two when the clocks go back over that time; when they skip it, the instant
    they jump over it.
    """
    day += timedelta(days=minutes // (24 * 60))
    minutes %= 24 * 60
    local = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=zone_info)
    instant = local.astimezone(UTC)
    if instant.astimezone(zone_info).replace(tzinfo=None) == local.replace(tzinfo=None):
        return list({instant, local.replace(fold=1).astimezone(UTC)})
    # In the gap: find the jump, the first second whose clock reads `local` or later.
    wall = local.replace(tzinfo=None)
    ends = (int(instant.timestamp()), int(local.replace(fold=1).astimezone(UTC).timestamp()))
    low, high = min(ends), max(ends)
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone_info).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return [datetime.fromtimestamp(high, UTC)]
