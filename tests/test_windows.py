"""Weekly windows ("Mon-Fri 08:00-18:00"): parsing, midnight, time zones, DST days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from siesta.core.windows import WindowError, in_window, next_change, parse_windows

PARIS = "Europe/Paris"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_office_hours_in_paris_on_a_winter_weekday() -> None:
    """Mon 2026-03-02, Paris is UTC+1: 08:00 local is 07:00Z; 18:00 local closes it."""
    spec = "Mon-Fri 08:00-18:00"
    assert not in_window(utc(2026, 3, 2, 6, 59), spec, PARIS)
    assert in_window(utc(2026, 3, 2, 7, 0), spec, PARIS)
    assert in_window(utc(2026, 3, 2, 16, 59, 59), spec, PARIS)
    assert not in_window(utc(2026, 3, 2, 17, 0), spec, PARIS)
    assert not in_window(utc(2026, 3, 7, 10, 0), spec, PARIS)  # a Saturday


def test_the_same_instant_in_different_time_zones() -> None:
    """12:00Z on a Monday: in New York's office hours? no (07:00); Tokyo's? no (21:00);
    London's? yes; and on Tokyo's Tuesday morning 23:30Z counts as Tuesday 08:30."""
    spec = "Mon-Fri 08:00-18:00"
    noon = utc(2026, 3, 2, 12, 0)
    assert not in_window(noon, spec, "America/New_York")
    assert not in_window(noon, spec, "Asia/Tokyo")
    assert in_window(noon, spec, "Europe/London")
    assert in_window(noon, spec)  # UTC by default
    assert in_window(utc(2026, 3, 2, 23, 30), "Tue 08:00-09:00", "Asia/Tokyo")
    assert not in_window(utc(2026, 3, 2, 23, 30), "Mon 08:00-09:00", "Asia/Tokyo")


def test_a_window_across_midnight_belongs_to_the_day_it_opens() -> None:
    """Fri-Sat 22:00-02:00: open Fri 22:00 to Sat 02:00 and Sat 22:00 to Sun 02:00 only."""
    spec = "Fri-Sat 22:00-02:00"
    assert not in_window(utc(2026, 3, 5, 23, 0), spec)  # Thursday night
    assert not in_window(utc(2026, 3, 6, 1, 0), spec)  # Friday 01:00: Thursday's would-be
    assert in_window(utc(2026, 3, 6, 22, 0), spec)  # Friday 22:00
    assert in_window(utc(2026, 3, 7, 1, 59), spec)  # Saturday 01:59
    assert not in_window(utc(2026, 3, 7, 2, 0), spec)
    assert in_window(utc(2026, 3, 8, 0, 30), spec)  # Sunday 00:30, from Saturday
    assert not in_window(utc(2026, 3, 8, 22, 30), spec)  # Sunday night


def test_lists_day_ranges_that_wrap_and_end_of_day() -> None:
    """Comma-separated windows; Fri-Mon wraps over the weekend; 24:00 ends the day."""
    spec = "Mon-Fri 08:00-12:00, Sat 10:00-24:00,Fri-Mon 23:00-23:30"
    assert in_window(utc(2026, 3, 7, 23, 59, 59), spec)  # Sat
    assert in_window(utc(2026, 3, 8, 23, 15), spec)  # Sun, from Fri-Mon
    assert in_window(utc(2026, 3, 9, 23, 15), spec)  # Mon
    assert not in_window(utc(2026, 3, 10, 23, 15), spec)  # Tue
    assert in_window(utc(2026, 3, 10, 9, 0), spec)
    assert in_window(utc(2026, 3, 8, 12, 0), "Mon-Sun 00:00-24:00")
    assert len(parse_windows(spec)) == 3


def test_spring_forward_day_in_paris() -> None:
    """2026-03-29: clocks jump from 02:00 CET to 03:00 CEST at 01:00Z.

    08:00 local is 06:00Z that day (07:00Z the day before); a window ending in the
    skipped hour ends when the clocks jump.
    """
    spec = "Sun 08:00-18:00"
    assert not in_window(utc(2026, 3, 29, 5, 59), spec, PARIS)
    assert in_window(utc(2026, 3, 29, 6, 0), spec, PARIS)
    assert not in_window(utc(2026, 3, 29, 16, 0), spec, PARIS)
    assert in_window(utc(2026, 3, 22, 7, 0), spec, PARIS)  # a week before: UTC+1
    assert not in_window(utc(2026, 3, 22, 6, 0), spec, PARIS)
    night = "Sun 01:00-02:30"
    assert in_window(utc(2026, 3, 29, 0, 59), night, PARIS)  # 01:59 CET
    assert not in_window(utc(2026, 3, 29, 1, 0), night, PARIS)  # 03:00 CEST
    assert next_change(utc(2026, 3, 29, 0, 30), night, PARIS) == utc(2026, 3, 29, 1, 0)
    assert next_change(utc(2026, 3, 29, 0, 0), spec, PARIS) == utc(2026, 3, 29, 6, 0)


def test_fall_back_day_in_paris() -> None:
    """2026-10-25: clocks go back from 03:00 CEST to 02:00 CET at 01:00Z; 02:15 happens
    twice, and a 02:00-02:30 window is open both times."""
    spec = "Sun 08:00-18:00"
    assert not in_window(utc(2026, 10, 25, 6, 59), spec, PARIS)
    assert in_window(utc(2026, 10, 25, 7, 0), spec, PARIS)
    assert in_window(utc(2026, 10, 25, 16, 59), spec, PARIS)
    assert not in_window(utc(2026, 10, 25, 17, 0), spec, PARIS)
    twice = "Sun 02:00-02:30"
    assert in_window(utc(2026, 10, 25, 0, 15), twice, PARIS)  # 02:15 CEST
    assert not in_window(utc(2026, 10, 25, 0, 45), twice, PARIS)  # 02:45 CEST
    assert in_window(utc(2026, 10, 25, 1, 15), twice, PARIS)  # 02:15 CET
    assert next_change(utc(2026, 10, 25, 0, 45), twice, PARIS) == utc(2026, 10, 25, 1, 0)
    overnight = "Sat 22:00-06:00"  # 9 hours this night instead of 8
    assert in_window(utc(2026, 10, 24, 20, 0), overnight, PARIS)  # 22:00 CEST
    assert in_window(utc(2026, 10, 25, 4, 59), overnight, PARIS)  # 05:59 CET
    assert next_change(utc(2026, 10, 24, 21, 0), overnight, PARIS) == utc(2026, 10, 25, 5, 0)


def test_next_change_skips_edges_where_nothing_changes() -> None:
    """Back-to-back windows change nothing at their shared edge; always-open never changes."""
    spec = "Mon 08:00-12:00, Mon 12:00-18:00"
    assert next_change(utc(2026, 3, 2, 9, 0), spec) == utc(2026, 3, 2, 18, 0)
    assert next_change(utc(2026, 3, 2, 19, 0), spec) == utc(2026, 3, 9, 8, 0)
    assert next_change(utc(2026, 3, 2, 9, 0), "Mon-Sun 00:00-24:00") is None


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "has no window"),
        ("Mon-Fry 08:00-18:00", "'Fry' in 'Mon-Fry 08:00-18:00' is not a day"),
        ("Mon-Fri 8-18", "is not a window: write DAYS HH:MM-HH:MM"),
        ("Mon 08:00-25:00", "'25:00' in 'Mon 08:00-25:00' is not a time of day"),
        ("Mon 08:61-09:00", "is not a time of day"),
        ("08:00-18:00", "is not a window"),
    ],
)
def test_bad_specs_say_how_to_write_them(spec: str, words: str) -> None:
    """Each mistake gets a message naming the part that is wrong."""
    with pytest.raises(WindowError, match=words):
        in_window(utc(2026, 3, 2, 9, 0), spec)


def test_unknown_time_zone_is_refused() -> None:
    """A misspelt IANA name is an error, not UTC."""
    with pytest.raises(WindowError, match="'Europe/Pariss' is not a known time zone"):
        in_window(utc(2026, 3, 2, 9, 0), "Mon 08:00-09:00", "Europe/Pariss")
