"""vdfarm.nbd.payload: a WRITE payload held as it arrives."""

from __future__ import annotations

import pytest

from vdfarm.nbd.errors import LocalProtocolError
from vdfarm.nbd.payload import SMALL_PIECE, Payload


def test_whole_bytes_piece_is_kept_by_reference():
    data = bytes(range(256)) * 32
    p = Payload(len(data))
    assert p.take(data, 0, owned=True) == len(data)
    assert p.data() is data and p.held == len(data) and p.remaining == 0


def test_pieces_of_a_reused_buffer_are_copied():
    buf = bytearray(b"x" * SMALL_PIECE * 2)
    p = Payload(len(buf))
    p.take(buf, 0, owned=False)
    buf[:] = bytes(len(buf))
    assert bytes(p.data()) == b"x" * SMALL_PIECE * 2


def test_small_pieces_are_gathered_in_one_buffer():
    p = Payload(1000)
    for i in range(1000):
        p.take(bytes([i % 256]), 0, owned=True)
    assert len(p._pieces) == 1  # one bytearray, not 1000 objects
    assert bytes(p.data()) == bytes(i % 256 for i in range(1000))


def test_take_stops_at_the_end_of_the_payload():
    p = Payload(10)
    assert p.take(b"0123456789abc", 3, owned=True) == 10
    assert p.remaining == 0 and bytes(p.data()) == b"3456789abc"
    assert p.take(b"more", 0, owned=True) == 0


def test_mixed_pieces_are_joined_in_order():
    big = b"B" * SMALL_PIECE
    p = Payload(2 + 2 * SMALL_PIECE)
    p.take(b"a", 0, True)
    p.take(big, 0, True)
    p.take(bytearray(big), 0, False)
    p.take(b"z", 0, True)
    assert p.data() == b"a" + big + big + b"z"


@pytest.mark.parametrize("keep", [True, False])
def test_incomplete_or_dropped_payload_has_no_data(keep):
    p = Payload(4, keep=keep)
    p.take(b"ab", 0, True)
    with pytest.raises(LocalProtocolError):
        p.data()
    p.take(b"cd", 0, True)
    if keep:
        assert p.data() == memoryview(b"abcd")
    else:
        assert p.held == 0
        with pytest.raises(LocalProtocolError):
            p.data()
