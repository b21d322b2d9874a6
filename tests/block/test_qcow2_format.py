"""qcow2_format: header decoding, L1/L2 entries, refcount packing. Pure.

Fuzz invariant, in plain words: any bytes either parse to a header or raise
Qcow2FormatError; never anything else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdfarm.block import qcow2_format as fmt
from vdfarm.block.qcow2_format import Qcow2FormatError, Qcow2UnsupportedError

from .qcow2_tools import create

MIB = 1 << 20


def header_bytes(tmp_path, **options) -> bytes:
    path = tmp_path / "h.qcow2"
    create(path, 3 * MIB, **options)
    return path.read_bytes()[: options.get("cluster_size", 65536)]


def patched(buf: bytes, offset: int, fmt_: str, value: int) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt_, out, offset, value)
    return bytes(out)


def test_version3_header_of_qemu_img(tmp_path):
    raw = header_bytes(tmp_path, cluster_size=4096, backing=None)
    h = fmt.parse_header(raw)
    assert (h.version, h.cluster_size, h.size) == (3, 4096, 3 * MIB)
    assert h.refcount_order == 4 and h.header_length >= 104
    assert h.l1_size * h.l2_entries * h.cluster_size >= h.size
    assert not h.has_backing_file and h.backing_format is None
    assert not h.is_dirty and not h.is_corrupt


def test_version2_header_and_backing_format(tmp_path):
    (tmp_path / "b.raw").write_bytes(bytes(4096))
    raw = header_bytes(tmp_path, compat="0.10", backing="b.raw", backing_fmt="raw")
    h = fmt.parse_header(raw)
    assert h.version == 2 and h.refcount_order == 4 and h.header_length == 72
    assert h.backing_format == "raw"
    name = raw[h.backing_file_offset : h.backing_file_offset + h.backing_file_size]
    assert fmt.decode_backing_name(name) == "b.raw"


@pytest.mark.parametrize(
    "offset,pack,value,error,words",
    [
        (0, ">I", 0x51464900, Qcow2FormatError, "magic"),
        (4, ">I", 4, Qcow2UnsupportedError, "version 4"),
        (4, ">I", 1, Qcow2UnsupportedError, "version 1"),
        (20, ">I", 8, Qcow2FormatError, "cluster size"),
        (20, ">I", 22, Qcow2UnsupportedError, "over 2 MiB"),
        (32, ">I", 1, Qcow2UnsupportedError, "encrypted"),
        (36, ">I", 0, Qcow2FormatError, "too small"),
        (40, ">Q", 4097, Qcow2FormatError, "not cluster aligned"),
        (72, ">Q", 1 << 2, Qcow2UnsupportedError, "external data file"),
        (72, ">Q", 1 << 3, Qcow2UnsupportedError, "compression"),
        (72, ">Q", 1 << 4, Qcow2UnsupportedError, "extended L2"),
        (72, ">Q", 1 << 40, Qcow2UnsupportedError, "unknown incompatible"),
        (96, ">I", 7, Qcow2FormatError, "refcount order"),
        (100, ">I", 100, Qcow2FormatError, "header length"),
    ],
)
def test_bad_header_fields(tmp_path, offset, pack, value, error, words):
    raw = header_bytes(tmp_path, cluster_size=4096)
    with pytest.raises(error, match=words):
        fmt.parse_header(patched(raw, offset, pack, value))


def test_dirty_and_corrupt_bits_are_reported_not_refused(tmp_path):
    raw = header_bytes(tmp_path, cluster_size=4096)
    h = fmt.parse_header(patched(raw, 72, ">Q", fmt.INCOMPAT_DIRTY | fmt.INCOMPAT_CORRUPT))
    assert h.is_dirty and h.is_corrupt


def test_truncated_headers(tmp_path):
    raw = header_bytes(tmp_path, cluster_size=4096)
    for cut in (0, 3, 71, 72, 103):
        with pytest.raises(Qcow2FormatError):
            fmt.parse_header(raw[:cut])


def test_extension_running_past_the_cluster(tmp_path):
    raw = header_bytes(tmp_path, cluster_size=4096)
    h = fmt.parse_header(raw)
    bad = bytearray(raw)
    struct.pack_into(">II", bad, h.header_length, fmt.EXT_BACKING_FORMAT, 5000)
    with pytest.raises(Qcow2FormatError, match="past the first cluster"):
        fmt.parse_header(bytes(bad))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_parse_or_raise_format_error(data):
    try:
        fmt.parse_header(data)
    except Qcow2FormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8))
def test_fuzz_mutated_header_parses_or_raises_format_error(mutations):
    raw = bytearray(_QEMU_HEADER)
    for at, value in mutations:
        raw[at] = value
    try:
        fmt.parse_header(bytes(raw))
    except Qcow2FormatError:
        pass


# The first 105 bytes of `qemu-img create -f qcow2 -o cluster_size=4096 x 3M`.
_QEMU_HEADER = bytes.fromhex(
    "514649fb000000030000000000000000000000000000000c000000000030000000000000"
    "000000020000000000003000000000000000100000000001000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000040000007000"
) + bytes(4096 - 105)


def test_embedded_qemu_header_is_valid():
    h = fmt.parse_header(_QEMU_HEADER)
    assert (h.version, h.cluster_size, h.size) == (3, 4096, 3 * MIB)


# -- entries -----------------------------------------------------------------


@pytest.mark.parametrize(
    "entry,version,kind",
    [
        (0, 3, fmt.UNALLOCATED),
        (fmt.OFLAG_COPIED | 0x10000, 3, fmt.NORMAL),
        (0x10000, 2, fmt.NORMAL),
        (fmt.OFLAG_ZERO, 3, fmt.ZERO_PLAIN),
        (fmt.OFLAG_COPIED | 0x10000 | fmt.OFLAG_ZERO, 3, fmt.ZERO_ALLOC),
        (fmt.OFLAG_COMPRESSED | 12345, 3, fmt.COMPRESSED),
    ],
)
def test_l2_kinds(entry, version, kind):
    assert fmt.l2_kind(entry, version) == kind


@pytest.mark.parametrize(
    "entry,version",
    [
        (0x10000 | 2, 3),  # reserved bit 1
        (0x10000 | (1 << 56), 3),  # reserved bit 56
        (fmt.OFLAG_ZERO, 2),  # no zero clusters in version 2
    ],
)
def test_l2_corrupt_entries(entry, version):
    with pytest.raises(Qcow2FormatError):
        fmt.l2_kind(entry, version)


def test_l1_and_reftable_entries():
    assert fmt.l1_l2_offset(fmt.OFLAG_COPIED | 0x30000) == 0x30000
    with pytest.raises(Qcow2FormatError):
        fmt.l1_l2_offset(0x30000 | 1)
    assert fmt.reftable_block_offset(0x20000) == 0x20000
    with pytest.raises(Qcow2FormatError):
        fmt.reftable_block_offset(0x20001)


def test_compressed_descriptor():
    bits = 16  # 64 KiB clusters: x = 62 - 8 = 54
    entry = fmt.OFLAG_COMPRESSED | (2 << 54) | 0x12345
    assert fmt.compressed_location(entry, bits) == (0x12345, 3 * 512 - 0x145)
    start, length = fmt.compressed_host_range(entry, bits)
    assert start == 0x12200 and length == 3 * 512


def test_table_round_trip():
    values = [0, 1, 1 << 63, 0x00FF_FFFF_FFFF_FE00]
    raw = fmt.encode_table(values)
    assert raw[:8] == bytes(8) and raw[8:16] == (1).to_bytes(8, "big")
    assert list(fmt.decode_table(raw)) == values


# -- refcounts ---------------------------------------------------------------


@pytest.mark.parametrize("order", range(7))
def test_refcount_packing_round_trip(order):
    bits = 1 << order
    entries = fmt.refcount_entries_per_block(12, order)
    assert entries * bits == 4096 * 8
    block = bytearray(4096)
    values = [(i * 2654435761) % (1 << bits) for i in range(entries)]
    for i, v in enumerate(values):
        fmt.refcount_set(block, i, order, v)
    assert [fmt.refcount_get(block, i, order) for i in range(entries)] == values
    with pytest.raises(Qcow2FormatError):
        fmt.refcount_set(block, 0, order, 1 << bits)


def test_refcount_layout_matches_the_spec():
    block = bytearray(16)
    fmt.refcount_set(block, 9, 0, 1)  # 1 bit: byte 1, bit 1 (LSB first)
    assert block[1] == 0b10
    block = bytearray(16)
    fmt.refcount_set(block, 3, 2, 0xA)  # 4 bits: byte 1, high nibble
    assert block[1] == 0xA0
    block = bytearray(16)
    fmt.refcount_set(block, 1, 4, 0x0102)  # 16 bits big-endian
    assert block[2:4] == b"\x01\x02"
