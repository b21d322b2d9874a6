"""Qcow2File writes, checked by qemu: `qemu-img check` finds nothing (not
even leaks) and `qemu-img compare` finds the model raw file's content, for
unaligned writes, writes across clusters, copy-on-write from a backing
chain, random mixes with zeroes and trims, and files grown past their
refcount blocks and refcount table. zero and trim alone:
test_qcow2_zero.py."""

from __future__ import annotations

import os
import random
import struct
import threading

import pytest

from vdfarm.block import qcow2_format as fmt
from vdfarm.block.layer import EXTENT_HOLE, EXTENT_ZERO
from vdfarm.block.qcow2 import Qcow2File
from vdfarm.block.raw import RawFile

from .qcow2_tools import assert_qemu_agrees, check, create, flatten, qemu_io

KIB = 1024
MIB = 1 << 20
HOLE = EXTENT_HOLE | EXTENT_ZERO


def header_of(path) -> fmt.Qcow2Header:
    with open(path, "rb") as f:
        return fmt.parse_header(f.read(4096))


def random_ops(
    disk, model: bytearray, rnd: random.Random, count: int, cluster: int, trim_zeroes: bool = True
) -> None:
    """Writes (mostly), zeroes, trims and flushes at awkward offsets. A
    trim zeroes the whole clusters it covers when `trim_zeroes` (v3, or
    no backing file), else changes nothing."""
    size = len(model)
    for _ in range(count):
        length = rnd.choice([1, 511, 512, cluster - 1, cluster + 1, 3 * cluster, 70000, 300000])
        length = min(length, size)
        offset = rnd.randrange(size - length + 1)
        op = rnd.random()
        if op < 0.65:
            data = rnd.randbytes(length)
            disk.pwrite(offset, data, fua=rnd.random() < 0.05)
            model[offset : offset + length] = data
        elif op < 0.85:
            disk.zero(offset, length, may_trim=rnd.random() < 0.5)
            model[offset : offset + length] = bytes(length)
        elif op < 0.95:
            disk.trim(offset, length)
            first = -(-offset // cluster) * cluster
            end = (offset + length) // cluster * cluster if offset + length < size else size
            if end > first and trim_zeroes:
                model[first:end] = bytes(end - first)
        else:
            disk.flush()


VARIANTS = [
    # cluster size, compat, refcount bits
    (512, "0.10", 16),
    (512, "1.1", 64),  # 64 refcounts a block: blocks and the table grow often
    (4096, "1.1", 1),
    (4096, "1.1", 8),
    (65536, "1.1", 16),
    (65536, "0.10", 16),
]


@pytest.mark.parametrize(
    "cluster,compat,refcount_bits", VARIANTS, ids=[f"{c}-{v}-r{r}" for c, v, r in VARIANTS]
)
def test_random_writes_without_backing(tmp_path, cluster, compat, refcount_bits):
    path = tmp_path / "w.qcow2"
    size = 4 * MIB + 3 * 512
    create(path, size, cluster, compat, refcount_bits=refcount_bits)
    disk = Qcow2File(path, None, read_only=False)
    model = bytearray(disk.size)
    random_ops(disk, model, random.Random(cluster + refcount_bits), 150, cluster)
    assert disk.pread(0, disk.size) == model
    disk.close()
    assert_qemu_agrees(path, model)
    reopened = Qcow2File(path, None, read_only=True)
    assert reopened.pread(0, reopened.size) == model
    reopened.close()


@pytest.mark.parametrize("cluster,compat", [(512, "1.1"), (4096, "0.10"), (65536, "1.1")])
def test_random_writes_over_a_qemu_made_chain(tmp_path, cluster, compat):
    """Copy-on-write from a backing chain with compressed and zero clusters."""
    rnd = random.Random(cluster)
    size = 2 * MIB + 512
    base, mid, top = tmp_path / "base.raw", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    base.write_bytes(rnd.randbytes(size - 3 * cluster - 512))  # shorter than the disk
    create(mid, size, cluster, compat, backing="base.raw", backing_fmt="raw")
    qemu_io(
        mid,
        f"write -c 0 {cluster}",
        f"write -c {4 * cluster} {cluster}",
        f"write -P 9 {cluster * 7 + 100} {cluster * 3}",
        f"write -z {cluster * 20} {cluster}",
    )
    create(top, size, cluster, compat, backing="mid.qcow2", backing_fmt="qcow2")
    qemu_io(top, f"write -c {8 * cluster} {cluster}", f"write -P 3 {cluster * 30} 5000")
    model = bytearray(flatten(top))
    below = Qcow2File(mid, RawFile(base, read_only=True), read_only=True)
    disk = Qcow2File(top, below, read_only=False)
    # Partial writes into every kind of cluster first, then random ones.
    for at in (
        0,
        4 * cluster,
        8 * cluster,
        7 * cluster,
        20 * cluster,
        30 * cluster,
        size - 700,
        (size - 3 * cluster - 512) // cluster * cluster,
    ):
        data = rnd.randbytes(300)
        disk.pwrite(at + 5, data)
        model[at + 5 : at + 305] = data
    random_ops(disk, model, rnd, 120, cluster, trim_zeroes=compat == "1.1")
    assert disk.pread(0, disk.size) == model
    disk.close()
    below.close()
    assert flatten(top) == model
    assert check(top).returncode == 0, check(top).stdout


def test_refcount_table_grows_and_counts_itself(tmp_path):
    path = tmp_path / "grow.qcow2"
    create(path, 16 * MIB, 512, refcount_bits=64)
    before = header_of(path)
    disk = Qcow2File(path, None, read_only=False)
    model = bytearray(disk.size)
    rnd = random.Random(3)
    for offset in range(0, 12 * MIB, 256 * KIB):
        data = rnd.randbytes(256 * KIB)
        disk.pwrite(offset, data)
        model[offset : offset + len(data)] = data
        if offset % (2 * MIB) == 0:
            disk.flush()
    disk.close()
    after = header_of(path)
    assert after.refcount_table_offset != before.refcount_table_offset
    assert after.refcount_table_clusters > before.refcount_table_clusters
    assert_qemu_agrees(path, model)


def test_refcount_blocks_are_added_past_the_first(tmp_path):
    path = tmp_path / "blocks.qcow2"
    create(path, 8 * MIB, 4096, refcount_bits=64)  # one block counts 2 MiB of file
    disk = Qcow2File(path, None, read_only=False)
    data = random.Random(1).randbytes(6 * MIB)
    disk.pwrite(0, data)
    disk.close()
    h = header_of(path)
    with open(path, "rb") as f:
        f.seek(h.refcount_table_offset)
        table = struct.unpack(">4Q", f.read(32))
    assert all(table[:3])  # at least three blocks now
    assert_qemu_agrees(path, data + bytes(2 * MIB))


def test_writes_are_visible_at_once_and_after_flush_to_qemu(tmp_path):
    path = tmp_path / "flush.qcow2"
    create(path, MIB, 4096)
    disk = Qcow2File(path, None, read_only=False)
    disk.pwrite(10000, b"A" * 20000)
    assert disk.pread(9999, 20002) == b"\0" + b"A" * 20000 + b"\0"
    disk.flush()
    model = bytearray(MIB)
    model[10000:30000] = b"A" * 20000
    assert_qemu_agrees(path, model)  # while still open
    disk.pwrite(500000, b"B" * 3, fua=True)
    model[500000:500003] = b"BBB"
    assert_qemu_agrees(path, model)
    disk.close()


def test_close_writes_the_metadata_back(tmp_path):
    path = tmp_path / "close.qcow2"
    create(path, MIB, 65536)
    disk = Qcow2File(path, None, read_only=False)
    disk.pwrite(65536 * 3 + 7, b"z" * 100000)
    disk.close()
    disk.close()  # twice is harmless
    model = bytearray(MIB)
    model[65536 * 3 + 7 : 65536 * 3 + 100007] = b"z" * 100000
    assert_qemu_agrees(path, model)


def test_overwriting_compressed_clusters_frees_them(tmp_path):
    path = tmp_path / "c.qcow2"
    create(path, MIB, 4096)
    qemu_io(path, *[f"write -c {i * 4096} 4096" for i in range(8)])
    model = bytearray(flatten(path))
    disk = Qcow2File(path, None, read_only=False)
    disk.pwrite(4096 + 1, b"q" * 4096)  # clusters 1 and 2: copy-on-write
    model[4097 : 4097 + 4096] = b"q" * 4096
    disk.zero(5 * 4096, 3 * 4096, may_trim=True)
    model[5 * 4096 : 8 * 4096] = bytes(3 * 4096)
    assert disk.pread(0, MIB) == model
    disk.close()
    assert_qemu_agrees(path, model)


def test_last_partial_cluster(tmp_path):
    """A disk whose size is not a multiple of the cluster size."""
    path = tmp_path / "tail.qcow2"
    size = 3 * 65536 + 1536
    create(path, size, 65536)
    disk = Qcow2File(path, None, read_only=False)
    assert disk.size == size
    disk.pwrite(size - 1000, b"t" * 1000)
    disk.zero(size - 100, 100)
    disk.trim(3 * 65536, 1536)  # the whole last (partial) cluster
    disk.pwrite(size - 10, b"e" * 10)
    model = bytearray(size)
    model[size - 10 :] = b"e" * 10
    assert disk.pread(0, size) == model
    disk.close()
    assert_qemu_agrees(path, model)


def test_granule_cache_is_dropped_for_written_clusters(tmp_path):
    """Reads cache where each granule lives; writes and zeroes must not
    leave a stale answer, in the top file or through a chain."""
    base, mid, top = tmp_path / "base.raw", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    base.write_bytes(b"\x11" * MIB)
    create(mid, MIB, 512, backing="base.raw")
    qemu_io(mid, "write -P 0x22 0 4096")
    create(top, MIB, 4096, backing="mid.qcow2", backing_fmt="qcow2")
    chain = [RawFile(base, read_only=True)]
    chain.append(Qcow2File(mid, chain[0], read_only=True))
    disk = Qcow2File(top, chain[1], read_only=False)
    assert disk.granule_bits == 9
    assert disk.pread(0, 512) == b"\x22" * 512
    assert disk.pread(8192, 512) == b"\x11" * 512
    disk.pwrite(100, b"\x33")
    assert disk.pread(0, 512) == b"\x22" * 100 + b"\x33" + b"\x22" * 411
    disk.zero(8192, 4096)
    assert disk.pread(8192, 512) == bytes(512)
    disk.pwrite(8192 + 4095, b"\x44")
    assert disk.pread(8192 + 3584, 512) == bytes(511) + b"\x44"
    disk.close()
    for layer in reversed(chain):
        layer.close()


def test_autoclear_bits_are_cleared_by_a_writer(tmp_path):
    path = tmp_path / "bitmap.qcow2"
    create(path, MIB, 65536)
    os.system(f"qemu-img bitmap --add {path} b0")
    assert header_of(path).autoclear_features
    disk = Qcow2File(path, None, read_only=False)
    disk.pwrite(0, b"x" * 5000)
    disk.close()
    assert header_of(path).autoclear_features == 0
    model = bytearray(MIB)
    model[:5000] = b"x" * 5000
    assert_qemu_agrees(path, model, leaks_ok=True)  # the bitmap's clusters are now leaks


def test_a_full_l2_cache_writes_dirty_tables_back(tmp_path):
    path = tmp_path / "small-cache.qcow2"
    create(path, 8 * MIB, 512)
    disk = Qcow2File(path, None, read_only=False, l2_cache_bytes=4 * 512)
    model = bytearray(disk.size)
    rnd = random.Random(8)
    for _ in range(300):
        offset = rnd.randrange(disk.size - 600)
        data = rnd.randbytes(600)
        disk.pwrite(offset, data)
        model[offset : offset + 600] = data
    assert disk.pread(0, disk.size) == model
    disk.close()
    assert_qemu_agrees(path, model)


def test_flush_in_a_worker_thread_while_writing(tmp_path):
    """The stream service flushes in an executor while the event loop goes
    on writing: no write may lose its metadata to a concurrent write-back."""
    path = tmp_path / "threads.qcow2"
    create(path, 8 * MIB, 512, refcount_bits=64)
    disk = Qcow2File(path, None, read_only=False)
    model = bytearray(disk.size)
    stop = threading.Event()
    errors = []

    def flusher():
        try:
            while not stop.is_set():
                disk.flush()
        except Exception as exc:  # noqa: BLE001 -- any failure is reported in the main thread
            errors.append(exc)

    worker = threading.Thread(target=flusher)
    worker.start()
    rnd = random.Random(4)
    try:
        for _ in range(250):
            length = rnd.choice([512, 3000, 70000])
            offset = rnd.randrange(disk.size - length)
            data = rnd.randbytes(length)
            disk.pwrite(offset, data)
            model[offset : offset + length] = data
            if rnd.random() < 0.1:
                disk.zero(offset, length, may_trim=True)
                model[offset : offset + length] = bytes(length)
    finally:
        stop.set()
        worker.join()
    assert not errors
    disk.flush()
    assert_qemu_agrees(path, model)  # before close: flush alone made it durable
    disk.close()
