"""MemoryDisk: a complete in-RAM layer."""

import pytest

from vdfarm.block.layer import EXTENT_ZERO, Extent
from vdfarm.block.memory import MemoryDisk


def test_starts_zero_or_with_initial_content():
    assert MemoryDisk(100).pread(0, 100) == bytes(100)
    disk = MemoryDisk(10, initial=b"abc")
    assert disk.size == 10
    assert disk.pread(0, 5) == b"abc\0\0"
    with pytest.raises(ValueError):
        MemoryDisk(2, initial=b"abc")
    with pytest.raises(ValueError):
        MemoryDisk(-1)


def test_write_read_trim_zero():
    disk = MemoryDisk(64, initial=b"\xff" * 64)
    disk.pwrite(2, memoryview(b"hello"), fua=True)
    assert disk.pread(0, 8) == b"\xff\xffhello\xff"
    disk.trim(0, 4)
    disk.zero(60, 4, may_trim=True, fast=True)
    assert disk.pread(0, 64) == bytes(4) + b"llo" + b"\xff" * 53 + bytes(4)


def test_read_is_a_copy():
    disk = MemoryDisk(8, initial=b"abcdefgh")
    data = disk.pread(0, 8)
    disk.pwrite(0, b"zz")
    assert data == b"abcdefgh"


def test_extents_report_zero_granules():
    disk = MemoryDisk(5 * 4096 + 100)
    disk.pwrite(4096 + 5, b"x")
    disk.pwrite(3 * 4096, b"y" * 4096)
    disk.pwrite(5 * 4096 + 99, b"z")
    assert disk.extents(0, disk.size) == [
        Extent(4096, EXTENT_ZERO),
        Extent(4096, 0),
        Extent(4096, EXTENT_ZERO),
        Extent(4096, 0),
        Extent(4096, EXTENT_ZERO),
        Extent(100, 0),
    ]
    assert disk.extents(4000, 200) == [Extent(96, EXTENT_ZERO), Extent(104, 0)]


def test_flush_counts_and_capabilities():
    disk = MemoryDisk(16)
    disk.flush()
    disk.cache(0, 16)
    assert disk.flush_count == 1
    caps = disk.capabilities()
    assert not caps.read_only and caps.can_trim and caps.can_fast_zero and caps.can_extents
