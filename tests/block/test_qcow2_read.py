"""Qcow2File reads and extents against images and chains made by qemu-img
and qemu-io, for every cluster size / version variant: bytes equal what
`qemu-img convert` gives, extents agree with `qemu-img map`."""

from __future__ import annotations

import os
import random

import pytest

from vdfarm.block.layer import EXTENT_HOLE, EXTENT_ZERO, Extent
from vdfarm.block.qcow2 import Qcow2File, qcow2_info
from vdfarm.block.raw import RawFile

from .qcow2_tools import (
    assert_extents_match_qemu,
    close_all,
    create,
    flatten,
    open_chain,
    qemu_io,
)

KIB = 1024
MIB = 1 << 20
HOLE = EXTENT_HOLE | EXTENT_ZERO

VARIANTS = [
    (512, "0.10"),
    (512, "1.1"),
    (4096, "1.1"),
    (65536, "0.10"),
    (65536, "1.1"),
    (2 * MIB, "1.1"),
]


def _random_writes(rnd: random.Random, size: int, count: int, pattern_base: int) -> list[str]:
    commands = []
    for i in range(count):
        length = rnd.choice([1, 511, 4096, 5000, 70000, 300000])
        offset = rnd.randrange(size - length)
        commands.append(f"write -P {pattern_base + i} {offset} {length}")
    return commands


def build_chain(tmp_path, cluster: int, compat: str) -> list:
    """base.raw (shorter than the disk, with a hole) ← mid.qcow2 ← top.qcow2.

    mid gets compressed clusters (written first: qemu only compresses into
    unallocated clusters), then random writes, zeroes and discards; top gets
    random writes and zeroes on top of those."""
    rnd = random.Random(cluster * 10 + len(compat))
    count = max(4 * MIB // cluster, 6)
    size = count * cluster + 3 * 512

    def at(index: int) -> int:
        return index % (count - 1) * cluster

    base = tmp_path / "base.raw"
    base_size = size - cluster - 1024
    with open(base, "wb") as f:
        f.write(rnd.randbytes(base_size))
        f.seek(MIB)
        f.write(bytes(256 * KIB))  # a run of zeroes (data)
    with open(base, "r+b") as f:
        f.truncate(base_size)
    mid, top = tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    create(mid, size, cluster, compat, backing="base.raw", backing_fmt="raw")
    compressed = [f"write -c {at(i)} {cluster}" for i in sorted({0, 3, 7} - {count - 1})]
    compressed.append(f"write -c {(count - 1) * cluster} {cluster}")
    zeroes = [
        f"write -z {at(5) + 512} {cluster}",
        f"write -z {at(11)} {cluster}",
        f"write -z -u {at(13)} {cluster}",
    ]
    qemu_io(
        mid, *compressed, *_random_writes(rnd, size, 20, 1), *zeroes, f"discard {at(20)} {cluster}"
    )
    create(top, size, cluster, compat, backing="mid.qcow2", backing_fmt="qcow2")
    qemu_io(
        top,
        *_random_writes(rnd, size, 15, 100),
        f"write -z {at(8)} {cluster * 2}",
        f"write -z {size - 3 * 512} {3 * 512}",
    )
    return [base, mid, top]


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{c}-{v}" for c, v in VARIANTS])
def chain_paths(request, tmp_path_factory):
    """Built once per variant; tests only read it."""
    cluster, compat = request.param
    return build_chain(tmp_path_factory.mktemp(f"chain-{cluster}-{compat}"), cluster, compat)


@pytest.fixture
def chain(chain_paths):
    paths = chain_paths
    layers = open_chain(paths)
    yield paths, layers
    close_all(layers)


def test_every_layer_reads_what_qemu_img_convert_gives(chain):
    paths, layers = chain
    for path, layer in zip(paths[1:], layers[1:], strict=True):
        expected = flatten(path)
        assert layer.size == len(expected)
        assert layer.pread(0, layer.size) == expected


def test_random_reads_match(chain):
    paths, layers = chain
    top = layers[-1]
    expected = flatten(paths[-1])
    rnd = random.Random(5)
    for _ in range(400):
        offset = rnd.randrange(top.size)
        length = min(rnd.choice([1, 512, 4096, 65536, 200000]), top.size - offset)
        assert top.pread(offset, length) == expected[offset : offset + length], (offset, length)
    # A second pass is served by the granule cache; same answers.
    for offset in range(0, top.size - 4096, 4096 * 13):
        assert top.pread(offset, 4096) == expected[offset : offset + 4096]


def test_extents_agree_with_qemu_img_map(chain):
    paths, layers = chain
    for path, layer in zip(paths[1:], layers[1:], strict=True):
        assert_extents_match_qemu(layer, path, step=layer.size)
        assert_extents_match_qemu(layer, path, step=layer.cluster_size * 3 + 512)


def test_info_and_backing_names(chain):
    paths, layers = chain
    info = qcow2_info(paths[-1])
    top = layers[-1]
    assert info["size"] == top.size
    assert info["cluster_size"] == top.cluster_size
    assert info["version"] == top.version
    assert info["backing_file"] == "mid.qcow2" and info["backing_format"] == "qcow2"
    assert (top.backing_file_name, top.backing_format) == ("mid.qcow2", "qcow2")
    assert (layers[1].backing_file_name, layers[1].backing_format) == ("base.raw", "raw")
    assert not info["dirty"] and not info["corrupt"] and info["snapshots"] == 0


def test_no_backing_unallocated_reads_zeroes_and_is_a_hole(tmp_path):
    path = tmp_path / "solo.qcow2"
    create(path, 2 * MIB, 65536)
    qemu_io(path, "write -P 0x5a 65536 4096")
    disk = Qcow2File(path, None, read_only=True)
    assert disk.backing_file_name is None and disk.backing_format is None
    assert disk.pread(0, 65536) == bytes(65536)
    assert disk.pread(65536, 8192) == b"\x5a" * 4096 + bytes(4096)
    assert disk.extents(0, 2 * MIB) == [
        Extent(65536, HOLE),
        Extent(65536, 0),
        Extent(2 * MIB - 131072, HOLE),
    ]
    disk.close()


def test_backing_layer_without_file_and_shorter(tmp_path):
    """Any Layer can be the backing; past its end the image reads zeroes."""
    from vdfarm.block.memory import MemoryDisk

    path = tmp_path / "over-memory.qcow2"
    create(path, MIB, 4096)
    qemu_io(path, "write -P 7 8192 4096")
    below = MemoryDisk(300000, initial=b"\x11" * 300000)
    disk = Qcow2File(path, below, read_only=True)
    expected = bytearray(MIB)
    expected[:300000] = b"\x11" * 300000
    expected[8192:12288] = b"\x07" * 4096
    assert disk.pread(0, MIB) == expected
    assert disk.pread(299000, 2000) == expected[299000:301000]
    assert disk.pread(296960, 4096) == expected[296960:301056]
    extents = disk.extents(0, MIB)
    assert sum(e.length for e in extents) == MIB
    assert extents[-1] == Extent(MIB - 300000, HOLE)
    disk.close()


def test_zero_cluster_keeping_its_host_cluster_is_zero_not_hole(tmp_path):
    path = tmp_path / "za.qcow2"
    create(path, MIB, 65536)
    qemu_io(path, "write -P 1 0 131072", "write -z 0 65536")  # no -u: keeps the cluster
    disk = Qcow2File(path, None, read_only=True)
    assert disk.pread(0, 131072) == bytes(65536) + b"\x01" * 65536
    assert disk.extents(0, 131072) == [Extent(65536, EXTENT_ZERO), Extent(65536, 0)]
    disk.close()


def test_a_long_read_of_host_contiguous_clusters_is_one_piece(tmp_path):
    path = tmp_path / "seq.qcow2"
    create(path, 4 * MIB, 65536)
    qemu_io(path, f"write -P 3 0 {2 * MIB}")
    disk = Qcow2File(path, None, read_only=True)
    pieces = disk.resolve(4096, MIB)
    assert len(pieces) == 1
    fd, host, length = pieces[0]
    assert isinstance(fd, int) and host % 65536 == 4096 and length == MIB
    assert disk.resolve(3 * MIB, 4096) == [(None, 0, 4096)]
    disk.cache(0, 4 * MIB)  # a hint; must not fail
    disk.close()


def test_chain_resolve_reaches_the_base_file(tmp_path):
    paths = build_chain(tmp_path, 65536, "1.1")
    layers = open_chain(paths)
    top = layers[-1]
    expected = flatten(paths[-1])
    base_inode = os.stat(paths[0]).st_ino
    # Find a cluster no delta wrote: its piece is a range of the base file.
    for offset in range(0, top.size, 65536):
        pieces = top.resolve(offset, 4096)
        fd = pieces[0][0]
        if isinstance(fd, int) and os.fstat(fd).st_ino == base_inode:
            assert pieces == [(fd, offset, 4096)]
            break
    else:
        pytest.fail("no cluster of the base file shows through")
    assert top.pread(offset, 4096) == expected[offset : offset + 4096]
    assert top.file_ranges(offset, 4096) == pieces
    close_all(layers)


def test_file_ranges_are_what_pread_returns_or_none(chain):
    _, layers = chain
    top = layers[-1]
    step = max(top.cluster_size, 65536)
    seen_ranges = seen_none = 0
    for offset in range(0, top.size - step, step):
        ranges = top.file_ranges(offset, step)
        if ranges is None:
            seen_none += 1
            assert any(src.__class__ is not int for src, _, _ in top.resolve(offset, step))
            continue
        seen_ranges += 1
        data = b"".join(os.pread(fd, n, pos) for fd, pos, n in ranges)
        assert data == top.pread(offset, step)
    assert seen_ranges and seen_none


def test_backing_without_file_ranges_is_read_through_its_pread(tmp_path):
    from vdfarm.block.memory import MemoryDisk

    path = tmp_path / "over-memory.qcow2"
    create(path, MIB, 65536)
    below = MemoryDisk(MIB, initial=b"\x09" * MIB)
    disk = Qcow2File(path, below, read_only=True)
    assert disk.resolve(100, 5000) == [(below, 100, 5000)]
    assert disk.file_ranges(100, 5000) is None
    assert disk.pread(100, 5000) == b"\x09" * 5000
    disk.close()


def test_capabilities(tmp_path):
    v3, v2 = tmp_path / "v3.qcow2", tmp_path / "v2.qcow2"
    create(v3, MIB)
    create(v2, MIB, compat="0.10")
    ro = Qcow2File(v3, None, read_only=True).capabilities()
    assert ro.read_only and ro.can_flush and ro.can_cache and ro.can_extents and ro.can_multi_conn
    assert not (ro.can_trim or ro.can_zero or ro.can_fast_zero or ro.can_fua)
    rw = Qcow2File(v3, None, read_only=False).capabilities()
    assert not rw.read_only
    assert all(
        [
            rw.can_flush,
            rw.can_fua,
            rw.can_trim,
            rw.can_zero,
            rw.can_fast_zero,
            rw.can_cache,
            rw.can_extents,
            rw.can_multi_conn,
        ]
    )
    rw2 = Qcow2File(v2, None, read_only=False).capabilities()
    assert rw2.can_zero and not rw2.can_fast_zero


def test_base_raw_layer_is_not_changed_by_reading(tmp_path):
    paths = build_chain(tmp_path, 4096, "1.1")
    before = paths[0].read_bytes()
    layers = open_chain(paths)
    layers[-1].pread(0, layers[-1].size)
    close_all(layers)
    assert paths[0].read_bytes() == before
    assert isinstance(layers[0], RawFile)
