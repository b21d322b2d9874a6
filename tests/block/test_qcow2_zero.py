"""Qcow2File zero and trim (qcow2_zero), checked by qemu: zero flags and
freed clusters on v3, zero bytes or dropped clusters on v2, a backing file
hidden by zeroes, the fast flag."""

from __future__ import annotations

import errno
import os

import pytest

from vdfarm.block.layer import EXTENT_HOLE, EXTENT_ZERO, Extent
from vdfarm.block.qcow2 import Qcow2File
from vdfarm.block.raw import RawFile

from .qcow2_tools import assert_qemu_agrees, check, create, flatten

MIB = 1 << 20
HOLE = EXTENT_HOLE | EXTENT_ZERO


def test_zero_v3_marks_clusters_and_frees_them_when_allowed(tmp_path):
    path = tmp_path / "z.qcow2"
    create(path, MIB, 65536)
    disk = Qcow2File(path, None, read_only=False)
    disk.pwrite(0, b"\x01" * (4 * 65536))
    disk.zero(0, 65536, may_trim=True)  # freed
    disk.zero(65536, 65536, may_trim=False)  # kept: zero flag + host cluster
    disk.zero(2 * 65536 + 100, 65536, fast=True)  # partial: zero bytes written
    expected = bytes(2 * 65536) + b"\x01" * 100 + bytes(65536) + b"\x01" * (65536 - 100)
    assert disk.pread(0, 4 * 65536) == expected
    assert disk.extents(0, 2 * 65536) == [Extent(65536, HOLE), Extent(65536, EXTENT_ZERO)]
    size_before = os.path.getsize(path)
    disk.pwrite(65536 + 10, b"\x02")  # reuses the kept host cluster
    assert disk.pread(65536, 20) == bytes(10) + b"\x02" + bytes(9)
    disk.close()
    assert os.path.getsize(path) == size_before
    model = bytearray(MIB)
    model[: len(expected)] = expected
    model[65546] = 2
    assert_qemu_agrees(path, model)


def test_zero_over_a_backing_file_hides_it(tmp_path):
    base, top = tmp_path / "base.raw", tmp_path / "top.qcow2"
    base.write_bytes(b"\xbb" * MIB)
    create(top, MIB, 4096, backing="base.raw")
    below = RawFile(base, read_only=True)
    disk = Qcow2File(top, below, read_only=False)
    assert disk.pread(8192, 4) == b"\xbb" * 4  # fills the granule cache
    disk.zero(8192, 3 * 4096 + 10, may_trim=True)
    disk.trim(65536, 8192)
    expected = bytearray(b"\xbb" * MIB)
    expected[8192 : 8192 + 3 * 4096 + 10] = bytes(3 * 4096 + 10)
    expected[65536 : 65536 + 8192] = bytes(8192)
    assert disk.pread(0, MIB) == expected
    disk.close()
    below.close()
    assert flatten(top) == expected
    assert check(top).returncode == 0


def test_version2_zero_and_trim(tmp_path):
    base, top = tmp_path / "base.raw", tmp_path / "top.qcow2"
    base.write_bytes(b"\xcc" * MIB)
    create(top, MIB, 4096, compat="0.10", backing="base.raw")
    below = RawFile(base, read_only=True)
    disk = Qcow2File(top, below, read_only=False)
    with pytest.raises(OSError) as exc:
        disk.zero(0, 8192, fast=True)
    assert exc.value.errno == errno.ENOTSUP
    disk.zero(4096, 8192)  # written as zero bytes
    disk.trim(65536, 65536)  # advisory: nothing to do with a backing file
    expected = bytearray(b"\xcc" * MIB)
    expected[4096:12288] = bytes(8192)
    assert disk.pread(0, MIB) == expected
    disk.close()
    assert flatten(top) == expected
    assert check(top).returncode == 0


def test_version2_without_backing_drops_clusters(tmp_path):
    path = tmp_path / "v2.qcow2"
    create(path, MIB, 4096, compat="0.10")
    disk = Qcow2File(path, None, read_only=False)
    disk.pwrite(0, b"\x05" * 65536)
    disk.zero(0, 8192, may_trim=True)
    disk.zero(8192, 8192)  # kept allocated: zero bytes written
    disk.trim(16384, 4096)
    assert disk.extents(0, 20480) == [Extent(8192, HOLE), Extent(8192, 0), Extent(4096, HOLE)]
    disk.close()
    model = bytearray(MIB)
    model[20480:65536] = b"\x05" * (65536 - 20480)
    assert_qemu_agrees(path, model)
