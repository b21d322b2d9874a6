"""Host cluster allocation and refcounts of a writable qcow2 image.

The refcount table and its blocks live in memory here; the owner (Qcow2File)
writes them to the file when it writes its metadata back, in the order the
`take_*` methods are meant to be called.

Rules:
- Append only: new clusters are taken at the end of the file (`free_index`),
  freed space is never handed out again while the image is open. So a freed
  cluster cannot be reused before the metadata that stopped pointing at it is
  on disk, and a crash never finds one host cluster claimed twice.
- Every cluster handed out gets refcount 1 at once, in memory; that includes
  new refcount blocks (a block may describe itself) and a grown refcount
  table (its clusters are counted in the new blocks).
- The owner's write-back order: `take_block_writes` (blocks) → sync →
  `take_table_writes` (table entries, or the whole moved table) → sync →
  header switch if the table moved → sync → L2/L1 → sync →
  `apply_deferred_frees` → `take_block_writes` again. A crash anywhere in it
  leaves at worst leaked clusters (refcount too high), never a referenced
  cluster with refcount too low.
- Frees are deferred (`defer_free`): a refcount drops only in
  `apply_deferred_frees`. The clusters of a replaced refcount table are
  deferred the same way.
- Blocks are loaded through the `read_cluster(offset) -> bytes` callback,
  which raises OSError(EIO) for a block past the end of the file. Corruption
  found here (a misaligned block offset, a refcount going below zero)
  raises OSError(EIO); clusters past the end of the file that are already
  counted (leaked by a crash) are stepped over, not reused.
"""

from __future__ import annotations

from collections.abc import Callable

from vdfarm.block.qcow2_format import (
    Qcow2FormatError,
    corrupt,
    decode_table,
    encode_table,
    refcount_entries_per_block,
    refcount_get,
    refcount_set,
    reftable_block_offset,
)


class RefcountAllocator:
    """Refcounts and append-only allocation of one image's host clusters."""

    def __init__(
        self,
        cluster_bits: int,
        refcount_order: int,
        table_raw: bytes,
        table_offset: int,
        table_clusters: int,
        end_offset: int,
        read_cluster: Callable[[int], bytes],
    ) -> None:
        """`table_raw`: the refcount table as read from the file;
        `end_offset`: the file size (allocation starts at the cluster after).

        Raises Qcow2FormatError if a table entry has reserved bits set.
        """
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.order = refcount_order
        self.per_block = refcount_entries_per_block(cluster_bits, refcount_order)
        self._table = [reftable_block_offset(e) for e in decode_table(table_raw)]
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        self.free_index = -(-end_offset // self.cluster_size)
        self._read_cluster = read_cluster
        self._blocks: dict[int, bytearray] = {}
        self._dirty_blocks: set[int] = set()
        self._dirty_entries: set[int] = set()
        self._table_moved = False
        self._deferred: list[tuple[int, int]] = []

    # -- queries -------------------------------------------------------------

    @property
    def has_changes(self) -> bool:
        """True while something is waiting to be written or freed."""
        return bool(
            self._dirty_blocks or self._dirty_entries or self._table_moved or self._deferred
        )

    def refcount(self, cluster: int) -> int:
        """Refcount of host cluster number `cluster`. Raises OSError(EIO)."""
        block = self._block_of(cluster)
        if block is None:
            return 0
        return refcount_get(block, cluster % self.per_block, self.order)

    # -- allocation ----------------------------------------------------------

    def allocate(self, count: int) -> int:
        """Take `count` contiguous free clusters at the end; return the byte
        offset of the first. Their refcounts become 1. Clusters past the end
        of the file that are already counted (leaked by a crash) are stepped
        over. Raises OSError(EIO) for corrupt refcount structures.
        """
        while True:
            start = self.free_index
            missing = self._first_uncovered(start, start + count)
            if missing is not None:
                self._add_block(missing)
                continue
            used = self._last_used(start, start + count)
            if used is None:
                break
            self.free_index = used + 1
        for cluster in range(start, start + count):
            self._set(cluster, 1)
        self.free_index = start + count
        return start << self.cluster_bits

    def defer_free(self, offset: int, length: int) -> None:
        """Drop one reference on each host cluster overlapping
        [offset, offset+length), later, in `apply_deferred_frees`."""
        self._deferred.append((offset, length))

    def apply_deferred_frees(self) -> list[int]:
        """Decrement the deferred ranges; return the byte offsets of the
        clusters that became free. Call only once the metadata that stopped
        referencing them is durable. Raises OSError(EIO) if a refcount would
        go below zero."""
        freed = []
        deferred, self._deferred = self._deferred, []
        for offset, length in deferred:
            first = offset >> self.cluster_bits
            last = (offset + length - 1) >> self.cluster_bits
            for cluster in range(first, last + 1):
                count = self.refcount(cluster)
                if count == 0:
                    raise corrupt(f"freeing host cluster {cluster} whose refcount is 0")
                self._set(cluster, count - 1)
                if count == 1:
                    freed.append(cluster << self.cluster_bits)
        return freed

    # -- write-back ----------------------------------------------------------

    def take_block_writes(self) -> list[tuple[int, bytes]]:
        """(offset, bytes) of every changed refcount block; they count as
        written once taken."""
        writes = [(offset, bytes(self._blocks[offset])) for offset in sorted(self._dirty_blocks)]
        self._dirty_blocks.clear()
        return writes

    def take_table_writes(self) -> tuple[list[tuple[int, bytes]], tuple[int, int] | None]:
        """(writes, header switch). The writes are the changed table entries,
        or the whole table when it moved; the header switch is
        (table offset, table clusters) to store in the header after the
        writes are durable, or None."""
        if self._table_moved:
            self._table_moved = False
            self._dirty_entries.clear()
            padded = self._table + [0] * (
                self.table_clusters * self.cluster_size // 8 - len(self._table)
            )
            return (
                [(self.table_offset, encode_table(padded))],
                (self.table_offset, self.table_clusters),
            )
        writes = [
            (self.table_offset + 8 * i, encode_table([self._table[i]]))
            for i in sorted(self._dirty_entries)
        ]
        self._dirty_entries.clear()
        return writes, None

    # -- helpers -------------------------------------------------------------

    def _block_of(self, cluster: int) -> bytearray | None:
        index = cluster // self.per_block
        if index >= len(self._table) or not self._table[index]:
            return None
        offset = self._table[index]
        block = self._blocks.get(offset)
        if block is None:
            if offset % self.cluster_size:
                raise corrupt(f"refcount block offset {offset} is not cluster aligned")
            block = bytearray(self._read_cluster(offset))
            self._blocks[offset] = block
        return block

    def _set(self, cluster: int, value: int) -> None:
        index = cluster // self.per_block
        block = self._block_of(cluster)
        if block is None:
            raise corrupt(f"no refcount block for host cluster {cluster}")
        try:
            refcount_set(block, cluster % self.per_block, self.order, value)
        except Qcow2FormatError as exc:
            raise corrupt(str(exc)) from None
        self._dirty_blocks.add(self._table[index])

    def _last_used(self, start: int, stop: int) -> int | None:
        """Highest cluster of [start, stop) whose refcount is not 0."""
        for cluster in range(stop - 1, start - 1, -1):
            if self.refcount(cluster):
                return cluster
        return None

    def _skip_used(self) -> int:
        """Move `free_index` past counted clusters; return it."""
        while self.refcount(self.free_index):
            self.free_index += 1
        return self.free_index

    def _first_uncovered(self, start: int, stop: int) -> int | None:
        """Lowest refcount block index without a block for clusters [start, stop)."""
        for index in range(start // self.per_block, (stop - 1) // self.per_block + 1):
            if index >= len(self._table) or not self._table[index]:
                return index
        return None

    def _add_block(self, index: int) -> None:
        """Create the refcount block `index` at the next free cluster."""
        if index >= len(self._table):
            self._grow_table(index + 1)
            return
        where = self._skip_used()
        self.free_index += 1
        offset = where << self.cluster_bits
        self._blocks[offset] = bytearray(self.cluster_size)
        self._dirty_blocks.add(offset)
        self._table[index] = offset
        self._dirty_entries.add(index)
        # `where` is in block `index` (it describes itself) or in a lower,
        # already covered block: allocate() adds the lowest missing first.
        self._set(where, 1)

    def _grow_table(self, min_entries: int) -> None:
        """Move the refcount table to the end, big enough for `min_entries`
        blocks and for the blocks that count the new table itself."""
        per_cluster = self.cluster_size // 8
        entries = max(min_entries, len(self._table) * 3 // 2)
        while True:
            entries = -(-entries // per_cluster) * per_cluster
            table_start = self._skip_used()
            table_clusters = entries // per_cluster
            new_blocks = self._blocks_needed(table_start, table_start + table_clusters)
            end = table_start + table_clusters + len(new_blocks)
            used = self._last_used(table_start, end)
            if used is not None:
                self.free_index = used + 1
            elif (end - 1) // self.per_block < entries:
                break
            else:
                entries += per_cluster
        old_offset, old_clusters = self.table_offset, self.table_clusters
        self._table += [0] * (entries - len(self._table))
        for i, index in enumerate(new_blocks):
            offset = (table_start + table_clusters + i) << self.cluster_bits
            self._blocks[offset] = bytearray(self.cluster_size)
            self._dirty_blocks.add(offset)
            self._table[index] = offset
        self.table_offset = table_start << self.cluster_bits
        self.table_clusters = table_clusters
        self._table_moved = True
        self.free_index = end
        for cluster in range(table_start, end):
            self._set(cluster, 1)
        self.defer_free(old_offset, old_clusters << self.cluster_bits)

    def _blocks_needed(self, start: int, stop: int) -> list[int]:
        """Block indexes that clusters [start, stop) plus the new blocks
        themselves (placed right after `stop`) need and do not have."""
        needed: list[int] = []
        end = stop
        while True:
            first = start // self.per_block
            last = (end - 1) // self.per_block
            missing = [
                i
                for i in range(first, last + 1)
                if (i >= len(self._table) or not self._table[i]) and i not in needed
            ]
            if not missing:
                return needed
            needed += missing
            end += len(missing)
