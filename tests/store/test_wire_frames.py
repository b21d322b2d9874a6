"""Frames on the replication wire: what pays is packed, the rest goes as it
is; the unpacker gives back exactly the bytes asked for, fed whole or byte
by byte, and refuses every broken, oversized or hostile record (a bomb
inflates no further than it said) with BadFrame and nothing else."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdfarm.store.errors import BadFrame
from vdfarm.store.wire_frames import (
    FRAME,
    HEADER,
    MAX_PACKED,
    MIN_RECORD,
    PROBE,
    RAW,
    ZLIB,
    Unframer,
    has_packable_frame,
    looks_packable,
    max_wire_bytes,
    pack,
)


def table(size: int = FRAME) -> bytes:
    """A qcow2-table-like frame: mostly zeroes, a few entries."""
    found = bytearray(size)
    for at in range(0, size, 4096):
        found[at : at + 8] = os.urandom(8)
    return bytes(found)


def unpack(body: bytes, expected: int, step: int | None = None) -> bytes:
    unframer = Unframer(expected)
    step = step or len(body) or 1
    out = b"".join(
        bytes(piece)
        for at in range(0, len(body), step)
        for piece in unframer.feed(body[at : at + step])
    )
    assert unframer.complete
    return out


def records(body: bytes) -> list[tuple[int, int, int]]:
    """(kind, decoded, payload) of each record of BODY."""
    found, at = [], 0
    while at < len(body):
        kind, decoded, payload = HEADER.unpack_from(body, at)
        found.append((kind, decoded, payload))
        at += HEADER.size + payload
    return found


def test_the_probe_tells_tables_from_random_bytes():
    assert looks_packable(table())
    assert looks_packable(bytes(FRAME))
    assert not looks_packable(os.urandom(FRAME))
    assert not looks_packable(b"")
    block = os.urandom(2 * FRAME) + table()
    assert looks_packable(block, 2 * FRAME) and not looks_packable(block, FRAME)
    assert has_packable_frame(block) and not has_packable_frame(os.urandom(3 * FRAME))


def test_random_bytes_go_as_they_are_in_one_record():
    data = os.urandom(4 * FRAME + 100)
    body = pack(data)
    assert records(body) == [(RAW, len(data), len(data))]
    assert len(body) == len(data) + HEADER.size
    assert unpack(body, len(data)) == data


def test_tables_are_packed_and_random_runs_stay_raw():
    data = os.urandom(2 * FRAME) + table() + table() + os.urandom(FRAME) + table(1000)
    body = pack(data)
    kinds = [(kind, decoded) for kind, decoded, _ in records(body)]
    assert kinds == [(RAW, 2 * FRAME), (ZLIB, FRAME), (ZLIB, FRAME), (RAW, FRAME), (ZLIB, 1000)]
    assert len(body) < len(data) - FRAME  # two tables went for a few hundred bytes each
    assert unpack(body, len(data)) == data
    assert unpack(body, len(data), step=1) == data
    assert unpack(body, len(data), step=4093) == data


def test_a_probe_that_was_wrong_costs_nothing_on_the_wire():
    zeros_then_noise = bytes(PROBE) + os.urandom(FRAME - PROBE)  # looks packable, is not
    body = pack(zeros_then_noise)
    assert records(body) == [(RAW, FRAME, FRAME)]
    assert unpack(body, FRAME) == zeros_then_noise


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["zero", "table", "random", "short"]), min_size=1, max_size=6))
def test_any_mix_round_trips(kinds):
    parts = {
        "zero": lambda: bytes(FRAME),
        "table": table,
        "random": lambda: os.urandom(FRAME),
        "short": lambda: table(777),
    }
    data = b"".join(parts[k]() for k in kinds if k != "short") + (
        parts["short"]() if "short" in kinds else b""
    )
    body = pack(data)
    assert len(body) <= max_wire_bytes(len(data))
    assert unpack(body, len(data)) == data
    assert unpack(body, len(data), step=997) == data


def packed_record(data: bytes, decoded: int | None = None) -> bytes:
    payload = zlib.compress(data, 9)
    return HEADER.pack(ZLIB, len(data) if decoded is None else decoded, len(payload)) + payload


@pytest.mark.parametrize(
    ("body", "expected", "message"),
    [
        (HEADER.pack(7, FRAME, FRAME), FRAME, "unknown kind 7"),
        (HEADER.pack(RAW, 0, 0), FRAME, "a frame of 0 bytes"),
        (HEADER.pack(RAW, 2 * FRAME, 2 * FRAME), FRAME, f"{FRAME} were left"),
        (HEADER.pack(RAW, MIN_RECORD - 1, MIN_RECORD - 1), FRAME, "before the last"),
        (HEADER.pack(RAW, FRAME, FRAME - 1), FRAME, "says it carries"),
        (HEADER.pack(ZLIB, FRAME, FRAME), FRAME, "smaller packed"),
        (HEADER.pack(ZLIB, FRAME, 0), FRAME, "smaller packed"),
        (HEADER.pack(ZLIB, MAX_PACKED + 1, 10), 2 * MAX_PACKED, f"at most {MAX_PACKED}"),
        (HEADER.pack(ZLIB, FRAME, 100) + os.urandom(100), FRAME, "does not inflate"),
        (packed_record(bytes(FRAME - 1), FRAME), FRAME, "to its 65536 bytes"),
        (packed_record(bytes(FRAME) + b"x", FRAME), 2 * FRAME, "to its 65536 bytes"),
    ],
    ids=[
        "unknown-kind",
        "empty",
        "past-the-range",
        "tiny",
        "raw-length",
        "not-smaller",
        "no-payload",
        "too-large",
        "garbage",
        "short-inflate",
        "longer-inflate",
    ],
)
def test_broken_records_are_refused(body, expected, message):
    with pytest.raises(BadFrame, match=message):
        Unframer(expected).feed(body)


def test_a_bomb_inflates_no_further_than_it_said():
    packer = zlib.compressobj(9)
    payload = b"".join(packer.compress(bytes(1 << 20)) for _ in range(256)) + packer.flush()
    assert len(payload) < MAX_PACKED  # 256 MiB of zeroes in a few hundred KiB
    body = HEADER.pack(ZLIB, MAX_PACKED, len(payload)) + payload
    unframer = Unframer(4 * MAX_PACKED)
    with pytest.raises(BadFrame, match="does not inflate to its"):
        for at in range(0, len(body), 65536):
            unframer.feed(body[at : at + 65536])


def test_a_short_body_is_not_complete():
    data = table() + os.urandom(FRAME)
    body = pack(data)
    unframer = Unframer(len(data))
    unframer.feed(body[:-1])
    assert not unframer.complete
    unframer = Unframer(len(data) + FRAME)  # a body that stops a record early
    unframer.feed(body)
    assert not unframer.complete


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=3 * FRAME))
def test_any_bytes_unpack_or_raise_bad_frame(noise, expected):
    unframer = Unframer(expected)
    try:
        got = sum(len(p) for p in unframer.feed(noise))
    except BadFrame:
        return
    assert got <= expected
