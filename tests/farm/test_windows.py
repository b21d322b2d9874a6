"""Copy windows and rate caps: parsing, refusals (one line, what was given),
`is_open` across midnight, `next_change`, and round trips as properties."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdfarm.farm.windows import (
    MAX_WINDOWS,
    Window,
    is_open,
    lowest_cap,
    next_change,
    parse_rate,
    parse_window,
    parse_windows,
    rate_text,
    windows_of_text,
    windows_text,
)

NIGHT = parse_window("22:00-06:00")
DAY = datetime(2030, 1, 1)


def at(hhmm: str) -> time:
    hour, minute = hhmm.split(":")
    return time(int(hour), int(minute))


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("22:00-06:00", Window(22 * 60, 6 * 60)),
        ("00:00-23:59", Window(0, 23 * 60 + 59)),
        (" 7:05-9:30 ", Window(7 * 60 + 5, 9 * 60 + 30)),
    ],
)
def test_windows_parse(text, window):
    assert parse_window(text) == window


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("25:00-06:00", "invalid window '25:00-06:00': hour must be 00-23"),
        ("22:00-24:00", "invalid window '22:00-24:00': hour must be 00-23"),
        ("22:60-06:00", "invalid window '22:60-06:00': minute must be 00-59"),
        ("06:00-06:00", "start and end are the same"),
        ("22-06", "invalid window '22-06': give HH:MM-HH:MM"),
        ("", "give HH:MM-HH:MM"),
        ("22:00-06:00-07:00", "give HH:MM-HH:MM"),
        ("２２:00-06:00", "give HH:MM-HH:MM"),  # full-width digits are not digits here
    ],
)
def test_bad_windows_are_one_line_errors(text, message):
    with pytest.raises(ValueError) as caught:
        parse_window(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_several_windows_alone_or_comma_separated_without_duplicates():
    windows = parse_windows(["22:00-06:00", "12:00-13:00,22:00-06:00"])
    assert windows == (NIGHT, parse_window("12:00-13:00"))
    assert windows_text(windows) == "22:00-06:00,12:00-13:00"
    assert parse_windows([]) == ()
    with pytest.raises(ValueError, match="at most"):
        parse_windows([f"{h:02d}:00-{h:02d}:30" for h in range(MAX_WINDOWS + 1)])
    with pytest.raises(ValueError, match="25:00"):
        parse_windows(["12:00-13:00", "25:00-06:00"])


def test_is_open_wraps_midnight_and_no_window_is_always_open():
    assert [is_open([NIGHT], at(t)) for t in ("21:59", "22:00", "00:00", "05:59", "06:00")] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert is_open([], at("12:00"))
    day = parse_window("08:00-17:00")
    assert is_open([day], DAY.replace(hour=8)) and not is_open([day], DAY.replace(hour=17))


def test_next_change():
    assert next_change([NIGHT], DAY.replace(hour=12, minute=30, second=5)) == DAY.replace(hour=22)
    assert next_change([NIGHT], DAY.replace(hour=23)) == DAY.replace(hour=6) + timedelta(days=1)
    assert next_change([], DAY) is None
    assert next_change(parse_windows(["00:00-12:00", "12:00-00:00"]), DAY) is None


def test_database_text_round_trip_skips_what_does_not_parse():
    assert windows_of_text("") == ()
    assert windows_of_text("22:00-06:00,nonsense,25:00-01:00") == (NIGHT,)


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("50MB/s", 50_000_000),
        ("20MB/s", 20_000_000),
        ("100M", 100_000_000),
        ("1.5GB/s", 1_500_000_000),
        ("512KiB/s", 512 * 1024),
        ("2MiB", 2 * 1024 * 1024),
        ("64kB/s", 64_000),
        ("1000", 1000),
        ("7/s", 7),
        (" 50 MB/s ", 50_000_000),
        ("0", None),
        ("none", None),
        ("None", None),
        (0, None),
        (123, 123),
    ],
)
def test_rates_parse(text, bps):
    assert parse_rate(text) == bps


@pytest.mark.parametrize(
    "text", ["fast", "50Mb/s", "-5MB/s", "1e6", "5iB", "0.5", "20 PB/s", "", "MB/s", True]
)
def test_bad_rates_are_one_line_errors(text):
    with pytest.raises(ValueError) as caught:
        parse_rate(text)
    assert "invalid rate" in str(caught.value) and "\n" not in str(caught.value)


def test_rate_text():
    assert [rate_text(b) for b in (None, 50_000_000, 1_500_000_000, 64_000, 7)] == [
        "none",
        "50MB/s",
        "1.5GB/s",
        "64kB/s",
        "7B/s",
    ]


minutes = st.integers(min_value=0, max_value=24 * 60 - 1)


@given(start=minutes, end=minutes)
def test_a_window_prints_as_it_parses(start, end):
    if start == end:
        return
    window = Window(start, end)
    assert parse_window(str(window)) == window


@given(start=minutes, end=minutes, minute=minutes)
def test_a_window_and_its_complement_split_the_day(start, end, minute):
    """Every minute is in exactly one of [start, end) and [end, start)."""
    if start == end:
        return
    inside = Window(start, end).contains(minute)
    assert inside != Window(end, start).contains(minute)


@given(bps=st.integers(min_value=1, max_value=10**13))
def test_a_rate_printed_reads_back_close(bps):
    assert abs(parse_rate(rate_text(bps)) - bps) <= bps * 1e-3 + 1


def test_the_lowest_cap_wins_and_none_means_no_cap():
    assert lowest_cap(None, None) is None
    assert lowest_cap(50_000_000, None) == 50_000_000
    assert lowest_cap(None, 20_000_000) == 20_000_000
    assert lowest_cap(50_000_000, 20_000_000) == 20_000_000
