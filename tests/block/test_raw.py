"""RawFile on real files: I/O, flush, trim, zero, extents (against qemu-img)."""

import errno
import json
import os
import shutil
import subprocess

import pytest

from vdfarm.block import fallocate as fa
from vdfarm.block import raw
from vdfarm.block.layer import EXTENT_HOLE, EXTENT_ZERO, Extent
from vdfarm.block.raw import RawFile, pread_exact, pwrite_all

from .conftest import MIB, write_pattern

HOLE = EXTENT_HOLE | EXTENT_ZERO


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    data = write_pattern(path, 256 * 1024)
    return path, data


def test_read_write_round_trip(image):
    path, data = image
    disk = RawFile(path, read_only=False)
    assert disk.size == len(data)
    assert disk.pread(1000, 5000) == data[1000:6000]
    disk.pwrite(4096, b"hello", fua=True)
    disk.pwrite(10, memoryview(bytearray(b"xyz")))
    disk.flush()
    disk.close()
    with open(path, "rb") as f:
        content = f.read()
    assert content[4096:4101] == b"hello"
    assert content[10:13] == b"xyz"
    assert content[:10] == data[:10] and content[4101:] == data[4101:]


def test_read_only_capabilities_and_refusal(image):
    path, _ = image
    disk = RawFile(path, read_only=True)
    caps = disk.capabilities()
    assert caps.read_only
    assert not (caps.can_trim or caps.can_zero or caps.can_fast_zero or caps.can_fua)
    assert caps.can_extents and caps.can_cache and caps.can_multi_conn
    with pytest.raises(OSError) as exc:
        disk.pwrite(0, b"x")
    assert exc.value.errno == errno.EBADF
    disk.close()


def test_writable_capabilities(image):
    caps = RawFile(image[0], read_only=False).capabilities()
    assert not caps.read_only
    assert all(
        [
            caps.can_flush,
            caps.can_fua,
            caps.can_trim,
            caps.can_zero,
            caps.can_fast_zero,
            caps.can_cache,
            caps.can_extents,
            caps.can_multi_conn,
        ]
    )


def test_short_read_past_end_of_file_is_eio(image):
    path, _ = image
    disk = RawFile(path, read_only=True)
    os.truncate(path, 1000)  # shrunk under us
    with pytest.raises(OSError) as exc:
        disk.pread(0, 4096)
    assert exc.value.errno == errno.EIO


def test_exact_helpers_loop_on_short_io(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(bytes(100))
    fd = os.open(path, os.O_RDWR)
    real_pwrite, real_pread = os.pwrite, os.pread
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: real_pwrite(fd, bytes(data)[:7], off))
    monkeypatch.setattr(os, "pread", lambda fd, n, off: real_pread(fd, min(n, 7), off))
    pwrite_all(fd, b"abcdefghijklmnopqrstuvwxyz", 10)
    assert pread_exact(fd, 10, 26) == b"abcdefghijklmnopqrstuvwxyz"
    os.close(fd)


def test_trim_punches_a_hole(image):
    path, data = image
    disk = RawFile(path, read_only=False)
    disk.trim(64 * 1024, 64 * 1024)
    assert disk.pread(64 * 1024, 64 * 1024) == bytes(64 * 1024)
    assert disk.extents(0, disk.size) == [
        Extent(64 * 1024, 0),
        Extent(64 * 1024, HOLE),
        Extent(128 * 1024, 0),
    ]
    assert disk.pread(0, 64 * 1024) == data[: 64 * 1024]


def test_trim_is_advisory_where_holes_are_unsupported(image, monkeypatch):
    path, data = image
    disk = RawFile(path, read_only=False)
    monkeypatch.setattr(fa, "punch_hole", _unsupported)
    disk.trim(0, 4096, fua=True)
    assert disk.pread(0, 4096) == data[:4096]


def test_zero_keeps_allocation_unless_may_trim(image):
    path, _ = image
    disk = RawFile(path, read_only=False)
    disk.zero(0, 64 * 1024)
    assert disk.pread(0, 64 * 1024) == bytes(64 * 1024)
    assert disk.extents(0, 64 * 1024) == [Extent(64 * 1024, 0)]
    disk.zero(128 * 1024, 64 * 1024, may_trim=True, fast=True)
    assert disk.pread(128 * 1024, 64 * 1024) == bytes(64 * 1024)
    assert disk.extents(128 * 1024, 64 * 1024) == [Extent(64 * 1024, HOLE)]


def _unsupported(*args):
    raise OSError(errno.EOPNOTSUPP, "not here")


def test_zero_falls_back_to_writing_zeroes(image, monkeypatch):
    path, data = image
    monkeypatch.setattr(fa, "punch_hole", _unsupported)
    monkeypatch.setattr(fa, "zero_range", _unsupported)
    monkeypatch.setattr(raw, "_ZERO_CHUNK", bytes(4096))
    disk = RawFile(path, read_only=False)
    disk.zero(1000, 3 * MIB // 16, may_trim=True, fua=True)
    length = 3 * MIB // 16
    assert disk.pread(0, disk.size) == data[:1000] + bytes(length) + data[1000 + length :]


def test_fast_zero_without_a_fast_method_is_enotsup(image, monkeypatch):
    path, data = image
    monkeypatch.setattr(fa, "zero_range", _unsupported)
    disk = RawFile(path, read_only=False)
    with pytest.raises(OSError) as exc:
        disk.zero(0, 4096, fast=True)
    assert exc.value.errno == errno.ENOTSUP
    assert disk.pread(0, 4096) == data[:4096]
    # with may_trim, a punched hole is a fast method
    disk.zero(0, 4096, may_trim=True, fast=True)
    assert disk.pread(0, 4096) == bytes(4096)


def test_real_io_errors_are_not_swallowed(image, monkeypatch):
    disk = RawFile(image[0], read_only=False)

    def broken(*args):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(fa, "zero_range", broken)
    with pytest.raises(OSError) as exc:
        disk.zero(0, 4096)
    assert exc.value.errno == errno.EIO


def test_extents_of_a_sparse_file(sparse_file):
    disk = RawFile(sparse_file, read_only=True)
    k = 1024
    assert disk.extents(0, MIB) == [
        Extent(64 * k, HOLE),
        Extent(64 * k, 0),
        Extent(384 * k, HOLE),
        Extent(64 * k, 0),
        Extent(448 * k, HOLE),
    ]
    # clipped to the asked range, starting inside extents
    assert disk.extents(100 * k, 450 * k) == [
        Extent(28 * k, 0),
        Extent(384 * k, HOLE),
        Extent(38 * k, 0),
    ]
    assert disk.extents(600 * k, 10 * k) == [Extent(10 * k, HOLE)]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_extents_agree_with_qemu_img_map(sparse_file):
    with open(sparse_file, "r+b") as f:
        f.seek(MIB - 4096)
        f.write(b"\x01" * 4096)
    disk = RawFile(sparse_file, read_only=True)
    ours = [(e.length, e.flags == 0) for e in disk.extents(0, disk.size)]
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "raw", str(sparse_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    theirs: list[tuple[int, bool]] = []
    for entry in json.loads(out):
        assert entry["data"] or entry["zero"]
        if theirs and theirs[-1][1] == entry["data"]:
            theirs[-1] = (theirs[-1][0] + entry["length"], entry["data"])
        else:
            theirs.append((entry["length"], entry["data"]))
    assert ours == theirs
    assert len(ours) == 6


def test_cache_and_close_twice(image):
    disk = RawFile(image[0], read_only=True)
    disk.cache(0, 4096)
    disk.close()
    disk.close()


def test_missing_file_raises():
    with pytest.raises(FileNotFoundError):
        RawFile("/nonexistent/disk.raw", read_only=True)
