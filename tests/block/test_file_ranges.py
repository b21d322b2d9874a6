"""file_ranges: what a transport may sendfile(2) must be exactly what pread
returns, and None wherever that is not a plain file range."""

import os

import pytest

from tests.block.conftest import write_pattern
from vdfarm.block.cow import WriteCacheOverlay
from vdfarm.block.memory import MemoryDisk
from vdfarm.block.raw import RawFile
from vdfarm.block.readonly import ReadOnlyGuard
from vdfarm.block.stack import CheckedStack

SIZE = 256 * 1024


def gather(ranges) -> bytes:
    return b"".join(os.pread(fd, length, offset) for fd, offset, length in ranges)


@pytest.fixture
def lower(tmp_path):
    write_pattern(tmp_path / "base.raw", SIZE)
    raw = RawFile(tmp_path / "base.raw", read_only=True)
    yield raw
    raw.close()


def test_raw_file_ranges_are_the_file(lower):
    assert gather(lower.file_ranges(1000, 5000)) == lower.pread(1000, 5000)
    assert lower.file_ranges(SIZE - 10, 20) is None  # past the end


def test_overlay_ranges_mix_cache_and_lower_and_match_pread(lower, tmp_path):
    overlay = WriteCacheOverlay(lower, tmp_path / "c.wcache", block_size=4096)
    overlay.pwrite(8192, b"\x11" * 10000)  # unaligned: partly patched blocks
    overlay.pwrite(65536, b"\x22" * 4096)
    for offset, length in [(0, SIZE), (4000, 70000), (8192, 4096), (100000, 1234)]:
        ranges = overlay.file_ranges(offset, length)
        assert ranges is not None
        assert gather(ranges) == bytes(overlay.pread(offset, length))
    overlay.close()


def test_overlay_zeroed_blocks_have_no_file_range(lower, tmp_path):
    overlay = WriteCacheOverlay(lower, tmp_path / "c.wcache", block_size=4096)
    overlay.zero(16384, 8192)
    assert overlay.file_ranges(0, 65536) is None
    assert overlay.file_ranges(16384, 4096) is None
    assert gather(overlay.file_ranges(0, 16384)) == lower.pread(0, 16384)
    overlay.close()


def test_memory_disk_has_no_file_ranges():
    assert MemoryDisk(4096).file_ranges(0, 4096) is None


def test_guards_pass_through_and_the_stack_checks_the_range(lower):
    stack = CheckedStack(ReadOnlyGuard(lower))
    assert gather(stack.file_ranges(0, 4096)) == lower.pread(0, 4096)
    with pytest.raises(OSError):
        stack.file_ranges(SIZE - 1, 2)
