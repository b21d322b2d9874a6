"""printable(): untrusted export names made safe for one log line."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdfarm.nbd.text import printable


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("pc1", "pc1"),
        ("é-disk ü", "é-disk ü"),
        ("a\nWARNING forged", "a\\nWARNING forged"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85", "c1\\x85"),  # NEL: a line break to some readers
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("back\\slash", "back\\\\slash"),
        (b"pc1", "pc1"),
        (b"\xff\xfe", "\\xff\\xfe"),
        (b"ok\xc3(", "ok\\xc3("),  # a cut UTF-8 sequence
        ("é".encode(), "é"),
        (b"a\nb", "a\\nb"),
    ],
)
def test_escapes(raw, shown):
    assert printable(raw) == shown


def test_escaped_backslash_cannot_be_confused_with_an_escape():
    assert printable("a\\nb") != printable("a\nb")


def test_length_is_capped_with_the_full_length_given():
    assert printable("x" * 300) == "x" * 256 + "...[300 chars]"
    assert printable("x" * 10, limit=4) == "xxxx...[10 chars]"
    assert printable("x" * 256) == "x" * 256


def test_an_escape_is_never_cut_in_half():
    out = printable("ab\n", limit=3)
    assert out == "ab...[3 chars]"


def test_a_forged_log_line_stays_one_line(caplog):
    name = "pc1\n2026-12-01 WARNING vdfarm.stream: admin logged in"
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("export %s", printable(name))
    assert len(caplog.text.splitlines()) == 1


@given(st.one_of(st.text(max_size=400), st.binary(max_size=400)), st.integers(0, 300))
def test_never_raises_and_only_printable_comes_out(raw, limit):
    out = printable(raw, limit)
    assert out.isprintable()
    body = out.split("...[")[0]
    assert len(body) <= limit
