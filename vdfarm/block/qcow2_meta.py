"""The metadata of one open qcow2 file: header read, L1 table, L2 table
cache, refcounts (through RefcountAllocator) and the ordered write-back.

Rules:
- Metadata is write-back: changed L2 tables, L1 entries and refcount blocks
  stay in memory, marked dirty, until `write_back` (called by flush, by
  close, and when the L2 cache is full of dirty tables). Reads always see
  the in-memory state.
- `write_back` writes in the order that keeps the file consistent after a
  crash at any point (like qemu's cache dependencies): data clusters synced
  → refcount blocks → sync → refcount table → sync → header (moved table)
  → sync → L2 tables → sync → L1 entries → sync → deferred frees. A crash
  leaves at worst leaked clusters; writes acknowledged before the last
  completed write_back + sync are all reachable.
- The L2 cache is bounded in bytes; clean tables are evicted oldest-loaded
  first (the granule cache of Qcow2File keeps hot lookups off it). When
  half the cache is dirty, everything is written back first.
- Corrupt metadata met at run time (an L2 table past the end of the file,
  reserved bits, misaligned offsets) raises OSError(EIO); at open, the
  header and L1 problems raise Qcow2FormatError.
"""

from __future__ import annotations

import errno
import os
from array import array

from vdfarm.block import fallocate as fa
from vdfarm.block.qcow2_alloc import RefcountAllocator
from vdfarm.block.qcow2_format import (
    AUTOCLEAR_FIELD_AT,
    MAX_CLUSTER_BITS,
    OFFSET_MASK,
    OFLAG_COPIED,
    REFCOUNT_TABLE_FIELDS_AT,
    Qcow2FormatError,
    Qcow2Header,
    corrupt,
    decode_backing_name,
    decode_table,
    encode_refcount_table_fields,
    encode_table,
    l1_l2_offset,
    parse_header,
)
from vdfarm.block.raw import pwrite_all

_FIRST_READ = 4096


def read_header(fd: int) -> tuple[Qcow2Header, str | None]:
    """(header, backing file name or None) of the qcow2 file open on `fd`.

    Raises Qcow2FormatError / Qcow2UnsupportedError, or the OSError of pread.
    """
    head = os.pread(fd, _FIRST_READ, 0)
    if len(head) >= 24:
        bits = int.from_bytes(head[20:24], "big")
        if 12 < bits <= MAX_CLUSTER_BITS:
            head = os.pread(fd, 1 << bits, 0)
    header = parse_header(head)
    if not header.has_backing_file:
        return header, None
    raw = os.pread(fd, header.backing_file_size, header.backing_file_offset)
    if len(raw) != header.backing_file_size:
        raise Qcow2FormatError("backing file name lies past the end of the file")
    return header, decode_backing_name(raw)


def _read_exact(fd: int, offset: int, length: int, what: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise corrupt(f"{what} at offset {offset} lies past the end of the file")
    return data


class Qcow2Metadata:
    """L1/L2 tables and refcounts of one image open on `fd`."""

    def __init__(
        self, fd: int, header: Qcow2Header, writable: bool, l2_cache_bytes: int = 32 << 20
    ) -> None:
        """Load the L1 table (and, when writable, the refcount table).

        Raises Qcow2FormatError if they lie past the end of the file or
        hold reserved bits; the OSError of pread.
        """
        self.fd = fd
        self.header = header
        self.version = header.version
        self.cluster_bits = header.cluster_bits
        self.cluster_size = 1 << header.cluster_bits
        self.l2_bits = header.cluster_bits - 3
        self._l2_cache_max = max(4, l2_cache_bytes // self.cluster_size)
        self.l1 = self._load_l1()
        self._l1_dirty: set[int] = set()
        self._l2: dict[int, array[int]] = {}
        self._l2_dirty: set[int] = set()
        self._data_unsynced = False
        self.alloc = self._open_allocator() if writable else None

    def _load_l1(self) -> array[int]:
        h = self.header
        raw = os.pread(self.fd, h.l1_size * 8, h.l1_table_offset)
        if len(raw) != h.l1_size * 8:
            raise Qcow2FormatError("L1 table lies past the end of the file")
        l1 = decode_table(raw)
        for entry in l1:
            l1_l2_offset(entry)
        return l1

    def _open_allocator(self) -> RefcountAllocator:
        h = self.header
        length = h.refcount_table_clusters << h.cluster_bits
        raw = os.pread(self.fd, length, h.refcount_table_offset)
        if len(raw) != length:
            raise Qcow2FormatError("refcount table lies past the end of the file")
        return RefcountAllocator(
            h.cluster_bits,
            h.refcount_order,
            raw,
            h.refcount_table_offset,
            h.refcount_table_clusters,
            os.fstat(self.fd).st_size,
            lambda offset: _read_exact(self.fd, offset, self.cluster_size, "refcount block"),
        )

    # -- L2 tables -----------------------------------------------------------

    def l2_table(self, l1_index: int) -> array[int] | None:
        """The L2 table for `l1_index`, or None when it has none.

        Raises OSError(EIO) for a corrupt L1 entry or a table past the end.
        """
        entry = self.l1[l1_index]
        if not entry:
            return None
        return self._l2_of(l1_index, entry)

    def _l2_of(self, l1_index: int, entry: int) -> array[int]:
        """The L2 table the nonzero L1 `entry` (at `l1_index`) points at,
        from the cache or read (and cached)."""
        offset = entry & OFFSET_MASK
        table = self._l2.get(offset)
        if table is not None:
            return table
        if entry & ~(OFFSET_MASK | OFLAG_COPIED) or offset % self.cluster_size:
            raise corrupt(f"L1 entry {l1_index} is 0x{entry:016x}")
        self._make_room(may_write_back=False)
        table = decode_table(_read_exact(self.fd, offset, self.cluster_size, "L2 table"))
        self._l2[offset] = table
        return table

    def l2_for_write(self, l1_index: int) -> tuple[int, array[int]]:
        """(offset, table) of the L2 table for `l1_index`, allocating a new
        empty one when it has none. Raises OSError(EIO) for a shared table
        (internal snapshots) or corrupt metadata."""
        entry = self.l1[l1_index]
        if entry:
            if not entry & OFLAG_COPIED:
                raise corrupt(f"L2 table of L1 entry {l1_index} is shared (snapshots?)")
            offset = entry & OFFSET_MASK
            if offset not in self._l2:
                self._make_room(may_write_back=True)
            return offset, self._l2_of(l1_index, entry)
        self._make_room(may_write_back=True)
        offset = self.allocator.allocate(1)
        table = array("Q", bytes(self.cluster_size))
        self._l2[offset] = table
        self._l2_dirty.add(offset)
        self.l1[l1_index] = offset | OFLAG_COPIED
        self._l1_dirty.add(l1_index)
        return offset, table

    @property
    def allocator(self) -> RefcountAllocator:
        """The refcounts, for writers. Raises OSError(EPERM) when the image
        was opened read-only (callers check that first)."""
        if self.alloc is None:
            raise OSError(errno.EPERM, "qcow2 metadata opened read-only")
        return self.alloc

    def mark_l2_dirty(self, offset: int) -> None:
        self._l2_dirty.add(offset)

    def note_data_written(self) -> None:
        """New data clusters were written: sync them before metadata."""
        self._data_unsynced = True

    def _make_room(self, may_write_back: bool) -> None:
        """Evict clean tables (oldest first) so one more fits. Writers (who
        hold the owner's lock) write everything back first when half the
        cache is dirty; readers never do, the cache then grows instead."""
        if len(self._l2) < self._l2_cache_max:
            return
        if may_write_back and len(self._l2_dirty) >= len(self._l2) // 2:
            self.write_back()
        for offset in list(self._l2):
            if len(self._l2) < self._l2_cache_max:
                return
            if offset not in self._l2_dirty:
                del self._l2[offset]

    # -- write-back ----------------------------------------------------------

    @property
    def is_dirty(self) -> bool:
        return bool(
            self._l2_dirty or self._l1_dirty or (self.alloc is not None and self.alloc.has_changes)
        )

    def write_back(self) -> None:
        """Write every dirty structure, in crash-safe order (module rules).

        Raises the OSError of pwrite/fdatasync, or OSError(EIO) for corrupt
        refcounts."""
        if not self.is_dirty:
            return
        if self._data_unsynced:
            self._sync()
        self._write_refcounts()
        self._write_l2_tables()
        self._write_l1_entries()
        alloc = self.allocator
        freed = alloc.apply_deferred_frees()
        for offset, raw in alloc.take_block_writes():
            pwrite_all(self.fd, raw, offset)
        self._punch(freed)

    def _sync(self) -> None:
        os.fdatasync(self.fd)
        self._data_unsynced = False

    def _write_refcounts(self) -> None:
        alloc = self.allocator
        blocks = alloc.take_block_writes()
        for offset, raw in blocks:
            pwrite_all(self.fd, raw, offset)
        table_writes, switch = alloc.take_table_writes()
        if blocks:
            self._sync()
        for offset, raw in table_writes:
            pwrite_all(self.fd, raw, offset)
        if table_writes:
            self._sync()
        if switch is not None:
            pwrite_all(self.fd, encode_refcount_table_fields(*switch), REFCOUNT_TABLE_FIELDS_AT)
            self._sync()

    def _write_l2_tables(self) -> None:
        if not self._l2_dirty:
            return
        for offset in sorted(self._l2_dirty):
            pwrite_all(self.fd, encode_table(self._l2[offset]), offset)
        self._l2_dirty.clear()
        self._sync()

    def _write_l1_entries(self) -> None:
        if not self._l1_dirty:
            return
        first, last = min(self._l1_dirty), max(self._l1_dirty)
        raw = encode_table(self.l1[first : last + 1])
        pwrite_all(self.fd, raw, self.header.l1_table_offset + 8 * first)
        self._l1_dirty.clear()
        self._sync()

    def _punch(self, offsets: list[int]) -> None:
        """Give freed clusters' space back (never reused while open)."""
        for offset in offsets:
            if not fa.call_if_supported(fa.punch_hole, self.fd, offset, self.cluster_size):
                return

    def clear_autoclear_features(self) -> None:
        """Writers must clear auto-clear bits they do not maintain (spec)."""
        if self.header.autoclear_features:
            pwrite_all(self.fd, bytes(8), AUTOCLEAR_FIELD_AT)
            self._sync()
