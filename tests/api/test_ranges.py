"""The one byte range a download may ask for: parsed, cut to the file, or
refused (416) — a table of headers."""

from __future__ import annotations

import pytest

from vdfarm.api.ranges import RangeNotSatisfiable, content_range, parse_range, unsatisfied_range

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", (0, 1)),
        ("bytes=0-999", (0, 1000)),
        ("bytes=10-19", (10, 20)),
        ("bytes=990-5000", (990, 1000)),
        ("bytes=990-", (990, 1000)),
        ("bytes=0-", (0, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=-5000", (0, 1000)),
        (" bytes=1-2 ", (1, 3)),
        ("bytes=999-999", (999, 1000)),
    ],
)
def test_a_range_is_parsed(header, expected):
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1000-", SIZE),
        ("bytes=1000-1000", SIZE),
        ("bytes=5-4", SIZE),
        ("bytes=-0", SIZE),
        ("bytes=-", SIZE),
        ("bytes=0-1,5-6", SIZE),
        ("bytes=+1-2", SIZE),
        ("bytes = 1-2", SIZE),
        ("items=0-1", SIZE),
        ("bytes=0x10-", SIZE),
        ("bytes=" + "9" * 20 + "-", SIZE),
        ("", SIZE),
        ("bytes=0-", 0),
        ("bytes=-1", 0),
    ],
)
def test_a_range_that_cannot_be_answered(header, size):
    with pytest.raises(RangeNotSatisfiable) as refused:
        parse_range(header, size)
    assert "\n" not in str(refused.value)


def test_the_headers_of_an_answer():
    assert content_range(10, 20, SIZE) == "bytes 10-19/1000"
    assert unsatisfied_range(SIZE) == "bytes */1000"
