"""try_pread: page-cache hits answered at once, misses as a ColdRead that
reads the same bytes when run; every layer agrees with its pread.

A miss is forced, not hoped for: `os.preadv` is wrapped so that a call with
RWF_NOWAIT fails with EAGAIN (or returns part of the range first), as the
kernel does when pages are not cached.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

from tests.block.conftest import MIB, write_pattern
from tests.block.qcow2_tools import close_all, flatten, open_chain
from tests.block.test_qcow2_read import build_chain
from vdfarm.block import nowait
from vdfarm.block.cow import WriteCacheOverlay
from vdfarm.block.memory import MemoryDisk
from vdfarm.block.nowait import ColdRead, probably_cached, try_pread_fd
from vdfarm.block.qcow2 import Qcow2File
from vdfarm.block.raw import RawFile
from vdfarm.block.stack import CheckedStack

pytestmark = pytest.mark.skipif(not nowait.RWF_NOWAIT, reason="no RWF_NOWAIT here")

real_preadv = os.preadv


def finish(result):
    """The bytes of a try_pread answer, running a ColdRead as a worker would."""
    return bytes(result()) if result.__class__ is ColdRead else bytes(result)


@pytest.fixture
def miss(monkeypatch):
    """Every RWF_NOWAIT read misses (EAGAIN); `state["partial"]` makes the
    first NOWAIT read of a call return half the buffer instead."""
    state = {"partial": False, "nowait_calls": 0}

    def preadv(fd, buffers, offset, flags=0):
        if flags & nowait.RWF_NOWAIT:
            state["nowait_calls"] += 1
            if state["partial"]:
                state["partial"] = False
                (buf,) = buffers
                half = len(buf) // 2
                return real_preadv(fd, [memoryview(buf)[:half]], offset)
            raise BlockingIOError(errno.EAGAIN, "would block")
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", preadv)
    return state


def test_raw_hit_is_the_bytes(tmp_path):
    data = write_pattern(tmp_path / "a.raw", MIB)
    disk = RawFile(tmp_path / "a.raw", read_only=True)
    rnd = random.Random(3)
    for _ in range(100):
        offset = rnd.randrange(MIB)
        length = min(rnd.choice([1, 512, 4096, 65536]), MIB - offset)
        got = disk.try_pread(offset, length)
        assert got.__class__ is not ColdRead  # just written: cached
        assert got == data[offset : offset + length]
    disk.close()


def test_raw_miss_is_a_cold_read_of_the_same_bytes(tmp_path, miss):
    data = write_pattern(tmp_path / "a.raw", MIB)
    disk = RawFile(tmp_path / "a.raw", read_only=True)
    got = disk.try_pread(4096, 8192)
    assert got.__class__ is ColdRead
    assert got() == data[4096 : 4096 + 8192]
    # Part cached, the rest not: still one cold read of the whole range.
    miss["partial"] = True
    got = disk.try_pread(100, 10000)
    assert got.__class__ is ColdRead and got() == data[100:10100]
    assert not probably_cached(disk.file_ranges(0, 65536))
    disk.close()


def test_a_short_read_then_the_rest_cached_is_the_bytes(tmp_path, monkeypatch):
    data = write_pattern(tmp_path / "a.raw", MIB)
    calls = []

    def preadv(fd, buffers, offset, flags=0):
        calls.append(flags)
        if flags and len(calls) == 1:  # the first NOWAIT read comes back short
            (buf,) = buffers
            return real_preadv(fd, [memoryview(buf)[:1000]], offset)
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", preadv)
    fd = os.open(tmp_path / "a.raw", os.O_RDONLY)
    try:
        got = try_pread_fd(fd, 5, 4096)
        assert got.__class__ is bytearray and got == data[5:4101]
        assert calls == [nowait.RWF_NOWAIT, nowait.RWF_NOWAIT]
    finally:
        os.close(fd)


def test_unsupported_nowait_reads_at_once(tmp_path, monkeypatch):
    data = write_pattern(tmp_path / "a.raw", MIB)

    def preadv(fd, buffers, offset, flags=0):
        if flags:
            raise OSError(errno.EOPNOTSUPP, "not here")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    disk = RawFile(tmp_path / "a.raw", read_only=True)
    assert disk.try_pread(10, 5000) == data[10:5010]
    assert probably_cached(disk.file_ranges(0, 65536))
    disk.close()


def test_past_the_end_of_a_short_file_is_eio_in_the_cold_read(tmp_path, miss):
    (tmp_path / "short.raw").write_bytes(b"x" * 1000)
    fd = os.open(tmp_path / "short.raw", os.O_RDONLY)
    try:
        cold = try_pread_fd(fd, 0, 4096)
        assert cold.__class__ is ColdRead
        with pytest.raises(OSError) as caught:
            cold()
        assert caught.value.errno == errno.EIO
    finally:
        os.close(fd)


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_qcow2_chain_try_pread_is_pread(tmp_path, request, cold):
    if cold:
        request.getfixturevalue("miss")
    paths = build_chain(tmp_path, 65536, "1.1")
    layers = open_chain(paths)
    top = layers[-1]
    expected = flatten(paths[-1])
    rnd = random.Random(7)
    kinds = set()
    for _ in range(300):
        offset = rnd.randrange(top.size)
        length = min(rnd.choice([1, 512, 4096, 65536, 200000]), top.size - offset)
        got = top.try_pread(offset, length)
        kinds.add(got.__class__ is ColdRead)
        assert finish(got) == expected[offset : offset + length], (offset, length)
    assert True in kinds if cold else kinds == {False}
    close_all(layers)


def test_qcow2_over_a_layer_without_files(tmp_path):
    from tests.block.qcow2_tools import create

    path = tmp_path / "over-memory.qcow2"
    create(path, MIB, 65536)
    below = MemoryDisk(MIB, initial=b"\x09" * MIB)
    disk = Qcow2File(path, below, read_only=True)
    assert disk.try_pread(100, 5000) == b"\x09" * 5000
    disk.close()


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_overlay_try_pread_is_pread_in_every_state(tmp_path, request, cold):
    data = write_pattern(tmp_path / "base.raw", MIB)
    base = RawFile(tmp_path / "base.raw", read_only=True)
    over = WriteCacheOverlay(base, tmp_path / "c.wcache", block_size=4096)
    over.pwrite(65536, b"\x01" * 65536)  # CACHED
    over.zero(262144, 65536)  # ZERO
    model = bytearray(data)
    model[65536:131072] = b"\x01" * 65536
    model[262144:327680] = bytes(65536)
    if cold:
        request.getfixturevalue("miss")
    stack = CheckedStack(over)
    for offset, length in [(0, 4096), (65536, 4096), (262144, 8192), (60000, 10000), (0, MIB)]:
        got = stack.try_pread(offset, length)
        assert finish(got) == model[offset : offset + length], (offset, length)
        assert finish(got) == bytes(stack.pread(offset, length))
    over.close()
    base.close()


def test_checked_stack_checks_the_range():
    stack = CheckedStack(MemoryDisk(4096))
    assert stack.try_pread(0, 0) == b""
    assert stack.try_pread(0, 4096) == bytes(4096)
    for offset, length in [(-1, 1), (0, -1), (4000, 97)]:
        with pytest.raises(OSError) as caught:
            stack.try_pread(offset, length)
        assert caught.value.errno == errno.EINVAL


def test_check_fua():
    disk = MemoryDisk(4096)
    CheckedStack(disk).check_fua("write")  # can_fua: nothing raised
    from vdfarm.block.readonly import ReadOnlyGuard

    with pytest.raises(OSError) as caught:
        CheckedStack(ReadOnlyGuard(disk)).check_fua("write")
    assert caught.value.errno == errno.EPERM
