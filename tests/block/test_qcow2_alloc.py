"""RefcountAllocator alone, over a dict standing for the file.

Invariant, in plain words: after any allocations, every cluster handed out
(data, new refcount blocks, grown refcount tables) has refcount exactly 1,
clusters nobody owns have 0, and what the write-back hands out (blocks,
table, header switch) describes exactly that when read back cold."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdfarm.block import qcow2_format as fmt
from vdfarm.block.qcow2_alloc import RefcountAllocator

BITS = 9  # 512-byte clusters
CS = 1 << BITS


class FakeFile:
    """A fresh image as qemu-img lays it out: header (0), refcount table (1),
    refcount block (2), L1 table (3); `order` is the refcount order."""

    def __init__(self, order: int, table_clusters: int = 1) -> None:
        self.order = order
        self.clusters: dict[int, bytes] = {}
        table = [0] * (table_clusters * CS // 8)
        table[0] = 2 * CS
        block = bytearray(CS)
        for cluster in range(4):
            fmt.refcount_set(block, cluster, order, 1)
        self.clusters[CS] = fmt.encode_table(table)
        self.clusters[2 * CS] = bytes(block)
        self.table = (CS, table_clusters)
        self.end = 4 * CS

    def read(self, offset: int) -> bytes:
        if offset not in self.clusters:
            raise OSError(errno.EIO, "past the end")
        return self.clusters[offset]

    def open(self) -> RefcountAllocator:
        offset, count = self.table
        raw = b"".join(self.clusters.get(offset + i * CS, bytes(CS)) for i in range(count))
        return RefcountAllocator(BITS, self.order, raw, offset, count, self.end, self.read)

    def write_back(self, alloc: RefcountAllocator) -> None:
        """What Qcow2Metadata.write_back does, minus syncs and L1/L2."""
        for offset, raw in alloc.take_block_writes():
            self._put(offset, raw)
        writes, switch = alloc.take_table_writes()
        for offset, raw in writes:
            self._put(offset, raw)
        if switch is not None:
            self.table = switch
        alloc.apply_deferred_frees()
        for offset, raw in alloc.take_block_writes():
            self._put(offset, raw)
        self.end = max(self.end, alloc.free_index * CS)

    def _put(self, offset: int, raw: bytes) -> None:
        for i in range(0, len(raw), CS):
            base = offset + i - (offset + i) % CS
            old = bytearray(self.clusters.get(base, bytes(CS)))
            part = raw[i : i + CS]
            at = (offset + i) % CS
            old[at : at + len(part)] = part
            self.clusters[base] = bytes(old)


def owned_clusters(fake: FakeFile, data: list[int]) -> set[int]:
    """Every cluster that must be counted: the fixed ones, the data handed
    out, the current table and every block it points to."""
    owned = {0, 3} | set(data)
    offset, count = fake.table
    owned |= {offset // CS + i for i in range(count)}
    raw = b"".join(fake.clusters[offset + i * CS] for i in range(count))
    owned |= {e // CS for e in fmt.decode_table(raw) if e}
    return owned


def assert_counts_exact(fake: FakeFile, data: list[int], upto: int) -> None:
    cold = fake.open()
    owned = owned_clusters(fake, data)
    for cluster in range(upto):
        assert cold.refcount(cluster) == (1 if cluster in owned else 0), cluster


@pytest.mark.parametrize("order", [0, 4, 6])
def test_allocations_are_counted_once(order):
    fake = FakeFile(order)
    alloc = fake.open()
    data = []
    for count in (1, 3, 1, 8):
        first = alloc.allocate(count) // CS
        data += range(first, first + count)
    assert data == list(range(4, 17))  # contiguous, at the end
    fake.write_back(alloc)
    assert_counts_exact(fake, data, 40)


def test_a_new_block_counts_itself():
    fake = FakeFile(6)  # 64 refcounts per block
    alloc = fake.open()
    data = [alloc.allocate(1) // CS for _ in range(70)]
    fake.write_back(alloc)
    assert fmt.decode_table(fake.clusters[CS])[1] == 64 * CS  # placed at cluster 64
    assert 64 not in data
    assert_counts_exact(fake, data, 200)


def test_the_table_grows_moves_and_frees_the_old_one():
    fake = FakeFile(6)  # one table cluster: 64 blocks = 4096 clusters
    alloc = fake.open()
    data = []
    for _ in range(100):
        first = alloc.allocate(50) // CS
        data += range(first, first + 50)
    assert len(set(data)) == 5000
    fake.write_back(alloc)
    offset, count = fake.table
    assert offset != CS and count > 1
    assert_counts_exact(fake, data, alloc.free_index + 10)
    assert fake.open().refcount(1) == 0  # the old table is free again


def test_the_table_grows_several_times_before_one_write_back():
    fake = FakeFile(6)
    alloc = fake.open()
    first = alloc.allocate(20000) // CS
    fake.write_back(alloc)
    assert_counts_exact(fake, list(range(first, first + 20000)), alloc.free_index + 10)


def test_leaked_clusters_past_the_end_are_stepped_over():
    fake = FakeFile(4)
    block = bytearray(fake.clusters[2 * CS])
    fmt.refcount_set(block, 5, 4, 1)  # leaked by a crash: past the end, counted
    fake.clusters[2 * CS] = bytes(block)
    alloc = fake.open()
    assert alloc.allocate(1) == 4 * CS
    assert alloc.allocate(2) == 6 * CS
    assert alloc.refcount(5) == 1


def test_deferred_frees_wait_and_report_free_clusters():
    fake = FakeFile(4)
    alloc = fake.open()
    offset = alloc.allocate(3)
    alloc.defer_free(offset + 10, CS)  # touches two clusters
    assert alloc.refcount(offset // CS) == 1  # nothing yet
    assert alloc.apply_deferred_frees() == [offset, offset + CS]
    assert alloc.refcount(offset // CS) == 0
    alloc.defer_free(offset, CS)
    with pytest.raises(OSError) as exc:
        alloc.apply_deferred_frees()
    assert exc.value.errno == errno.EIO


def test_table_entries_are_written_alone_when_the_table_stays():
    fake = FakeFile(6)
    alloc = fake.open()
    assert alloc.allocate(70) == 5 * CS  # block 1 went first, at cluster 4
    blocks = alloc.take_block_writes()
    assert {offset for offset, _ in blocks} == {2 * CS, 4 * CS}
    writes, switch = alloc.take_table_writes()
    assert switch is None and writes == [(CS + 8, (4 * CS).to_bytes(8, "big"))]
    assert not alloc.has_changes


def test_a_block_past_the_end_of_the_file_is_eio():
    fake = FakeFile(4)
    table = bytearray(fake.clusters[CS])
    table[8:16] = (100 * CS).to_bytes(8, "big")
    fake.clusters[CS] = bytes(table)
    alloc = fake.open()
    with pytest.raises(OSError) as exc:
        alloc.refcount(256 + 5)  # 256 refcounts a block: block 1
    assert exc.value.errno == errno.EIO


@settings(max_examples=60, deadline=None)
@given(
    order=st.sampled_from([0, 3, 4, 6]),
    steps=st.lists(st.tuples(st.integers(1, 300), st.booleans()), min_size=1, max_size=25),
)
def test_random_allocations_keep_counts_exact(order, steps):
    fake = FakeFile(order)
    alloc = fake.open()
    data = []
    for count, write_back in steps:
        first = alloc.allocate(count) // CS
        data += range(first, first + count)
        if write_back:
            fake.write_back(alloc)
            alloc = fake.open()  # what a reopen would see
            alloc.free_index = max(alloc.free_index, first + count)
    fake.write_back(alloc)
    assert len(set(data)) == len(data)
    assert_counts_exact(fake, data, alloc.free_index + 5)
