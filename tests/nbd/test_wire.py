"""Pure parsers and packers of vdfarm.nbd.wire."""

from __future__ import annotations

import pytest

from tests.nbd import client_bytes as cb
from vdfarm.nbd import constants as c
from vdfarm.nbd import wire
from vdfarm.nbd.errors import LocalProtocolError


def test_parse_info_request_round_trip():
    assert wire.parse_info_request(cb.go_data("vdisk-é", (1, 3, 99))) == ("vdisk-é", (1, 3, 99))


def test_parse_meta_context_request_round_trip():
    data = cb.meta_data("disk", ("base:allocation", "x-a:"))
    assert wire.parse_meta_context_request(data) == ("disk", [b"base:allocation", b"x-a:"])


def test_query_count_larger_than_the_option_is_invalid_without_work():
    with pytest.raises(wire.OptionInvalid, match="query count"):
        wire.parse_meta_context_request(b"\0\0\0\0\xff\xff\xff\xff")


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"disk", "disk"),
        (b"", ""),
        ("é".encode(), "é"),
        (b"a\0b", None),
        (b"\xff", None),
        (b"x" * 4097, None),
        (b"x" * 4096, "x" * 4096),
    ],
)
def test_decode_string(raw, text):
    assert wire.decode_string(raw) == text


def test_encode_string_refuses_what_the_protocol_cannot_carry():
    assert wire.encode_string("disk", "name") == b"disk"
    for bad in ("a\0", "x" * 4097):
        with pytest.raises(LocalProtocolError):
            wire.encode_string(bad, "name")


def test_encode_message_never_fails_and_stays_a_string():
    raw = wire.encode_message("\0" + "€" * 2000)
    assert len(raw) <= c.MAX_STRING and wire.decode_string(raw) == "€" * (c.MAX_STRING // 3)
    assert wire.encode_message("\udcff") == b"?"  # lone surrogate from a bad file name


def test_allowed_command_flags_follow_the_advertised_flags():
    assert wire.allowed_command_flags(0, False) == {c.CMD_READ: 0, c.CMD_WRITE: 0}
    full = wire.allowed_command_flags(
        c.FLAG_SEND_FUA
        | c.FLAG_SEND_DF
        | c.FLAG_SEND_FLUSH
        | c.FLAG_SEND_TRIM
        | c.FLAG_SEND_CACHE
        | c.FLAG_SEND_WRITE_ZEROES
        | c.FLAG_SEND_FAST_ZERO,
        True,
    )
    fua = c.CMD_FLAG_FUA
    assert full == {
        c.CMD_READ: fua | c.CMD_FLAG_DF,
        c.CMD_WRITE: fua,
        c.CMD_FLUSH: fua,
        c.CMD_TRIM: fua,
        c.CMD_CACHE: fua,
        c.CMD_WRITE_ZEROES: fua | c.CMD_FLAG_NO_HOLE | c.CMD_FLAG_FAST_ZERO,
        c.CMD_BLOCK_STATUS: fua | c.CMD_FLAG_REQ_ONE,
    }


def test_descriptors_of_a_huge_extent_end_aligned():
    ((length, flags),) = wire.block_status_descriptors([(1 << 40, 2), (1, 0)], (1 << 32) - 1, False)
    assert flags == 2 and length < 1 << 32 and length % 65536 == 0
