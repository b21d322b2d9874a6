"""ReadOnlyGuard: nothing reaches the layer below except reads and flush."""

import errno

import pytest

from vdfarm.block.memory import MemoryDisk
from vdfarm.block.readonly import ReadOnlyGuard


@pytest.fixture
def guarded():
    disk = MemoryDisk(8192, initial=b"\x07" * 8192)
    return disk, ReadOnlyGuard(disk)


@pytest.mark.parametrize(
    "call",
    [
        lambda g: g.pwrite(0, b"x"),
        lambda g: g.trim(0, 4096),
        lambda g: g.zero(0, 4096),
        lambda g: g.zero(0, 4096, may_trim=True, fast=True),
    ],
)
def test_changes_are_refused(guarded, call):
    disk, guard = guarded
    with pytest.raises(OSError) as exc:
        call(guard)
    assert exc.value.errno == errno.EPERM
    assert disk.pread(0, 8192) == b"\x07" * 8192


def test_reads_flush_extents_cache_pass_through(guarded):
    disk, guard = guarded
    assert guard.size == 8192
    assert guard.pread(10, 4) == b"\x07" * 4
    guard.flush()
    assert disk.flush_count == 1
    assert guard.extents(0, 8192) == disk.extents(0, 8192)
    guard.cache(0, 8192)


def test_capabilities_say_read_only(guarded):
    _, guard = guarded
    caps = guard.capabilities()
    assert caps.read_only
    assert not (caps.can_trim or caps.can_zero or caps.can_fast_zero or caps.can_fua)
    assert caps.can_flush and caps.can_extents and caps.can_cache and caps.can_multi_conn
