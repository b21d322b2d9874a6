"""WriteCacheOverlay: copy-on-write over a shared lower layer."""

import errno
import hashlib
import os
import stat

import pytest

from vdfarm.block import fallocate as fa
from vdfarm.block.cow import WriteCacheOverlay
from vdfarm.block.layer import EXTENT_HOLE, EXTENT_ZERO, Extent, Layer
from vdfarm.block.memory import MemoryDisk
from vdfarm.block.raw import RawFile
from vdfarm.block.readonly import ReadOnlyGuard

from .conftest import MIB, write_pattern

HOLE = EXTENT_HOLE | EXTENT_ZERO
K = 1024


class Recorder(Layer):
    """Passes everything through and records the calls it saw."""

    def __init__(self, next):
        super().__init__(next)
        self.calls = []

    def pread(self, offset, length):
        self.calls.append(("pread", offset, length))
        return self.next.pread(offset, length)

    def cache(self, offset, length):
        self.calls.append(("cache", offset, length))
        self.next.cache(offset, length)

    def extents(self, offset, length):
        self.calls.append(("extents", offset, length))
        return self.next.extents(offset, length)


@pytest.fixture
def lower(tmp_path):
    """A 256 KiB random image opened read-write (so a stray write would land)."""
    path = tmp_path / "base.raw"
    data = write_pattern(path, 256 * K)
    disk = RawFile(path, read_only=False)
    yield disk, data, path
    disk.close()


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_writes_never_touch_the_lower_file(lower, tmp_path):
    disk, data, path = lower
    before = sha256(path)
    overlay = WriteCacheOverlay(disk, tmp_path / "cache")
    overlay.pwrite(0, b"\x01" * 64 * K, fua=True)
    overlay.pwrite(70 * K + 3, b"\x02" * 10_000)
    overlay.zero(128 * K, 64 * K, may_trim=True)
    overlay.zero(200 * K + 1, 5)
    overlay.trim(220 * K, 10 * K)
    overlay.flush()
    overlay.reset()
    overlay.pwrite(5, b"after reset")
    overlay.close()
    assert sha256(path) == before


def test_cache_file_is_sparse_and_sized_and_deleted_on_close(lower, tmp_path):
    disk, _, _ = lower
    cache = tmp_path / "cache"  # a stale file there is refused (see below), never reused
    overlay = WriteCacheOverlay(disk, cache)
    assert os.stat(cache).st_size == disk.size
    assert os.stat(cache).st_blocks == 0
    assert overlay.pread(0, 27) == disk.pread(0, 27)
    overlay.pwrite(8 * K, b"x" * 4 * K)
    assert os.stat(cache).st_blocks * 512 <= 16 * K
    overlay.close()
    overlay.close()
    assert not cache.exists()


def test_aligned_and_unaligned_writes(lower, tmp_path):
    disk, data, _ = lower
    model = bytearray(data)
    overlay = WriteCacheOverlay(disk, tmp_path / "cache")
    for offset, payload in [
        (0, b"A" * 4096),  # one whole block
        (8192 + 100, b"B" * 50),  # inside one block
        (16384 - 10, b"C" * 20),  # across a block boundary
        (20480 + 1, b"D" * 3 * 4096),  # head, whole blocks, tail
        (8192 + 120, b"E" * 10),  # again into a CACHED block
        (256 * K - 7, b"F" * 7),  # the very end
    ]:
        overlay.pwrite(offset, payload)
        model[offset : offset + len(payload)] = payload
    assert overlay.pread(0, overlay.size) == model
    for offset, length in [(0, 1), (8190, 200), (20000, 20000), (256 * K - 9, 9)]:
        assert overlay.pread(offset, length) == model[offset : offset + length]
    assert overlay.used_bytes == 4096 * (1 + 1 + 2 + 4 + 1)


def test_partial_write_reads_the_lower_block_once(tmp_path):
    below = Recorder(MemoryDisk(64 * K, initial=bytes(range(256)) * 256))
    overlay = WriteCacheOverlay(below, tmp_path / "cache")
    overlay.pwrite(4096 + 10, b"xy")
    assert below.calls == [("pread", 4096, 4096)]
    below.calls.clear()
    overlay.pwrite(4096 + 20, b"z")  # now CACHED: patched in place
    overlay.pwrite(8192, b"w" * 4096)  # whole block: no read
    assert below.calls == []


def test_short_last_block(tmp_path):
    size = 3 * 4096 + 1000
    lower_disk = MemoryDisk(size, initial=b"\x05" * size)
    overlay = WriteCacheOverlay(lower_disk, tmp_path / "cache")
    overlay.pwrite(3 * 4096 + 10, b"tail")
    overlay.zero(3 * 4096, 1000)  # the short last block, whole
    assert overlay.pread(3 * 4096, 1000) == bytes(1000)
    assert overlay.extents(3 * 4096, 1000) == [Extent(1000, HOLE)]
    overlay.pwrite(size - 1, b"!")
    assert overlay.pread(size - 2, 2) == b"\0!"
    assert os.stat(tmp_path / "cache").st_size == size


def test_zero_and_trim_then_read(lower, tmp_path):
    disk, data, _ = lower
    model = bytearray(data)
    overlay = WriteCacheOverlay(disk, tmp_path / "cache")
    overlay.pwrite(0, b"\x09" * 32 * K)
    model[0 : 32 * K] = b"\x09" * 32 * K
    for call, offset, length in [
        ("zero", 4 * K, 8 * K),  # whole blocks, CACHED → ZERO
        ("zero", 40 * K + 5, 100),  # partial, BELOW block
        ("trim", 64 * K - 100, 12 * K),  # partial head, whole blocks, partial tail
        ("zero", 20 * K + 1, 2),  # partial, CACHED block
        ("trim", 4 * K + 7, 9),  # partial, already ZERO block
    ]:
        getattr(overlay, call)(offset, length)
        model[offset : offset + length] = bytes(length)
    assert overlay.pread(0, overlay.size) == model
    assert overlay.used_bytes == (32 - 8) * K + 4 * K + 4 * K + 4 * K


def test_write_into_a_zero_block_does_not_resurrect_old_data(lower, tmp_path, monkeypatch):
    disk, data, _ = lower

    # even where the cache file cannot punch holes
    def unsupported(*args):
        raise OSError(errno.EOPNOTSUPP, "no holes here")

    monkeypatch.setattr(fa, "punch_hole", unsupported)
    overlay = WriteCacheOverlay(disk, tmp_path / "cache")
    overlay.pwrite(0, b"\x33" * 8192)
    overlay.zero(0, 8192)
    overlay.pwrite(100, b"new")
    assert overlay.pread(0, 8192) == bytes(100) + b"new" + bytes(8192 - 103)


def test_zero_frees_cache_space(lower, tmp_path):
    disk, _, _ = lower
    cache = tmp_path / "cache"
    overlay = WriteCacheOverlay(disk, cache)
    overlay.pwrite(0, b"\x01" * 128 * K)
    used_blocks = os.stat(cache).st_blocks
    overlay.zero(0, 128 * K)
    assert overlay.used_bytes == 0
    assert os.stat(cache).st_blocks < used_blocks


def test_extents_merge_overlay_and_lower(sparse_file, tmp_path):
    disk = RawFile(sparse_file, read_only=True)
    overlay = WriteCacheOverlay(disk, tmp_path / "cache")
    # lower: hole [0,64K) data [64K,128K) hole [128K,512K) data [512K,576K) hole [576K,1M)
    overlay.pwrite(32 * K, b"x" * 32 * K)  # data right before lower data → merges
    overlay.zero(544 * K, 64 * K)  # zero over the end of lower data and hole
    overlay.pwrite(800 * K, b"y" * 4 * K)
    assert overlay.extents(0, MIB) == [
        Extent(32 * K, HOLE),
        Extent(96 * K, 0),
        Extent(384 * K, HOLE),
        Extent(32 * K, 0),
        Extent(256 * K, HOLE),
        Extent(4 * K, 0),
        Extent(220 * K, HOLE),
    ]
    assert overlay.extents(40 * K, 10) == [Extent(10, 0)]
    assert overlay.extents(545 * K, 2 * K) == [Extent(2 * K, HOLE)]


def test_lower_extents_that_end_early_are_asked_again(tmp_path):
    class Stingy(Layer):
        def extents(self, offset, length):
            return [Extent(min(1000, length), 0)]

    overlay = WriteCacheOverlay(Stingy(MemoryDisk(10_000)), tmp_path / "cache")
    assert overlay.extents(0, 10_000) == [Extent(10_000, 0)]

    class Mute(Layer):
        def extents(self, offset, length):
            return []

    overlay = WriteCacheOverlay(Mute(MemoryDisk(10_000)), tmp_path / "cache2")
    with pytest.raises(OSError) as exc:
        overlay.extents(0, 100)
    assert exc.value.errno == errno.EIO


def test_cache_goes_below_only_for_below_runs(tmp_path):
    below = Recorder(MemoryDisk(64 * K))
    overlay = WriteCacheOverlay(below, tmp_path / "cache")
    overlay.pwrite(8 * K, b"x" * 8 * K)
    overlay.zero(32 * K, 4 * K)
    overlay.cache(0, 64 * K)
    assert [c for c in below.calls if c[0] == "cache"] == [
        ("cache", 0, 8 * K),
        ("cache", 16 * K, 16 * K),
        ("cache", 36 * K, 28 * K),
    ]


def test_limit_refuses_the_write_that_overflows(lower, tmp_path):
    disk, data, _ = lower
    overlay = WriteCacheOverlay(disk, tmp_path / "cache", limit_bytes=16 * K)
    overlay.pwrite(0, b"\x01" * 8 * K)
    overlay.pwrite(100 * K + 1, b"\x02" * 10)  # one partial block
    assert overlay.used_bytes == 12 * K
    with pytest.raises(OSError) as exc:
        overlay.pwrite(200 * K - 1, b"\x03" * 2)  # two blocks: 20K > 16K
    assert exc.value.errno == errno.ENOSPC
    assert overlay.used_bytes == 12 * K
    assert overlay.pread(200 * K - 4, 8) == data[200 * K - 4 : 200 * K + 4]
    assert overlay.pread(0, 8 * K) == b"\x01" * 8 * K
    assert overlay.pread(100 * K, 12) == (
        data[100 * K : 100 * K + 1] + b"\x02" * 10 + data[100 * K + 11 : 100 * K + 12]
    )
    overlay.pwrite(0, b"\x04" * 8 * K)  # rewriting cached blocks is free
    overlay.pwrite(52 * K, b"\x05" * 4 * K)  # exactly up to the limit
    assert overlay.used_bytes == 16 * K
    with pytest.raises(OSError):
        overlay.pwrite(60 * K, b"\x06")
    with pytest.raises(OSError) as exc:
        overlay.zero(70 * K + 1, 5)  # zeroing a partial block needs space
    assert exc.value.errno == errno.ENOSPC
    overlay.trim(70 * K + 1, 5)  # trim is advisory: no error, no change
    assert overlay.pread(70 * K, 8) == data[70 * K : 70 * K + 8]
    overlay.zero(0, 8 * K)  # frees two blocks
    assert overlay.used_bytes == 8 * K
    overlay.pwrite(60 * K, b"\x06")
    assert overlay.pread(60 * K, 1) == b"\x06"


def test_reset_forgets_every_write(lower, tmp_path):
    disk, data, _ = lower
    cache = tmp_path / "cache"
    overlay = WriteCacheOverlay(disk, cache, limit_bytes=64 * K)
    overlay.pwrite(0, b"\x01" * 64 * K)
    overlay.zero(128 * K, 4 * K)
    overlay.reset()
    assert overlay.used_bytes == 0
    assert overlay.pread(0, overlay.size) == data
    assert overlay.extents(0, overlay.size) == disk.extents(0, disk.size)
    assert os.stat(cache).st_size == disk.size and os.stat(cache).st_blocks == 0
    overlay.pwrite(0, b"\x02" * 64 * K)  # the whole limit is available again
    assert overlay.pread(0, 4) == b"\x02" * 4


def test_two_overlays_over_one_lower_do_not_see_each_other(lower, tmp_path):
    disk, data, _ = lower
    first = WriteCacheOverlay(disk, tmp_path / "a")
    second = WriteCacheOverlay(disk, tmp_path / "b")
    first.pwrite(0, b"first")
    second.pwrite(3, b"second")
    second.zero(64 * K, 4 * K)
    assert first.pread(0, 10) == b"first" + data[5:10]
    assert second.pread(0, 10) == data[:3] + b"second" + data[9:10]
    assert first.pread(64 * K, 4 * K) == data[64 * K : 68 * K]
    first.close()
    assert second.pread(0, 10) == data[:3] + b"second" + data[9:10]


def test_capabilities_and_bad_arguments(lower, tmp_path):
    disk, _, _ = lower
    caps = WriteCacheOverlay(ReadOnlyGuard(disk), tmp_path / "cache").capabilities()
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
    with pytest.raises(ValueError):
        WriteCacheOverlay(disk, tmp_path / "c2", block_size=3000)
    with pytest.raises(ValueError):
        WriteCacheOverlay(disk, tmp_path / "c3", limit_bytes=-1)
    with pytest.raises(FileNotFoundError):
        WriteCacheOverlay(disk, tmp_path / "no" / "such" / "dir")


def test_the_cache_file_is_new_never_an_existing_file_or_link(tmp_path):
    disk = MemoryDisk(64 * 1024)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "linked").symlink_to(victim)
    (tmp_path / "existing").write_bytes(b"old cache")
    for name in ("linked", "existing"):
        with pytest.raises(FileExistsError):
            WriteCacheOverlay(disk, tmp_path / name)
    assert victim.read_bytes() == b"keep me"
    assert (tmp_path / "existing").read_bytes() == b"old cache"
    overlay = WriteCacheOverlay(disk, tmp_path / "fresh")
    assert stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) == 0o600
    overlay.close()
