"""Qcow2Zeroer: zero and trim on a qcow2 file, by metadata where it can.

The fourth part of Qcow2File (vdfarm.block.qcow2), over Qcow2Writer.

Rules:
- zero(): v3 sets the zero flag on whole clusters (keeping the host cluster
  unless may_trim); v2 can only drop clusters when there is no backing file,
  else it writes zeroes. Partial clusters get zero bytes written (through
  the write path), also with `fast` (at most two clusters: cheap enough);
  `fast` fails on v2 only.
- trim(): whole clusters only, like zero(may_trim=True): they read as zeroes
  afterwards (never the backing file's older data); partial clusters and, on
  v2 with a backing file, everything is left as it is (trim is advisory).
- The last, partial cluster of the disk counts as whole when the range
  reaches the end of the disk.
- Host clusters no longer used are freed through the allocator's deferred
  frees (given back at the next flush), like the write path's.
- Same lock, same EPERM when read-only, same granule cache dropping as the
  write path.
"""

from __future__ import annotations

import errno

from vdfarm.block.qcow2_format import (
    COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    UNALLOCATED,
    ZERO_PLAIN,
    compressed_host_range,
)
from vdfarm.block.qcow2_write import Qcow2Writer
from vdfarm.block.raw import pwrite_all

_ZERO_CHUNK = 1 << 20


class Qcow2Zeroer(Qcow2Writer):
    """zero and trim of one qcow2 file (a part of Qcow2File)."""

    def zero(
        self,
        offset: int,
        length: int,
        may_trim: bool = False,
        fua: bool = False,
        fast: bool = False,
    ) -> None:
        """Raises OSError(EPERM) when read-only, OSError(ENOTSUP) with
        `fast` on a version 2 image, else like pwrite."""
        self._check_writable()
        if fast and self.version < 3:
            raise OSError(errno.ENOTSUP, "no fast zero on a version 2 qcow2 image")
        if length <= 0:
            return
        with self._lock:
            self._forget(offset, length)
            first, end = self._whole_clusters(offset, length)
            if first >= end:
                self._write_zeroes(offset, offset + length)
            else:
                self._write_zeroes(offset, first << self._bits)
                if self.version >= 3 or self.backing is None:
                    self._drop_clusters(first, end, keep=not may_trim)
                else:
                    self._write_zeroes(first << self._bits, end << self._bits)
                self._write_zeroes(end << self._bits, offset + length)
            if fua:
                self._flush()

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Whole clusters read as zeroes afterwards (module docstring).
        Raises OSError(EPERM) when read-only, else like pwrite."""
        self._check_writable()
        first, end = self._whole_clusters(offset, length)
        with self._lock:
            if first < end and (self.version >= 3 or self.backing is None):
                self._forget(offset, length)
                self._drop_clusters(first, end, keep=False)
            if fua:
                self._flush()

    def _whole_clusters(self, offset: int, length: int) -> tuple[int, int]:
        """[first, end) of the clusters wholly inside the range; the last,
        partial cluster of the disk counts as whole when the range reaches
        the end."""
        stop = offset + length
        first = -(-offset >> self._bits)
        end = stop >> self._bits if stop < self._size else -(-stop >> self._bits)
        return first, end

    def _write_zeroes(self, start: int, stop: int) -> None:
        stop = min(stop, self._size)
        while start < stop:
            n = min(_ZERO_CHUNK, stop - start)
            self._write_range(start, memoryview(bytes(n)))
            start += n

    def _drop_clusters(self, first: int, end: int, keep: bool) -> None:
        """Make whole clusters [first, end) read as zeroes by metadata
        (v3, or no backing file)."""
        cluster = first
        while cluster < end:
            span_end = min(end, (cluster | self._l2_mask) + 1)
            self._drop_in_table(cluster, span_end, keep)
            cluster = span_end

    def _drop_in_table(self, first: int, end: int, keep: bool) -> None:
        l1_index = first >> self._l2_bits
        if self.backing is None and self._meta.l2_table(l1_index) is None:
            return
        l2_offset, table = self._meta.l2_for_write(l1_index)
        plain = OFLAG_ZERO if self.backing is not None else 0
        changed = False
        for cluster in range(first, end):
            index = cluster & self._l2_mask
            entry = table[index]
            new = self._dropped_entry(entry, plain, keep)
            if new != entry:
                table[index] = new
                changed = True
        if changed:
            self._meta.mark_l2_dirty(l2_offset)

    def _dropped_entry(self, entry: int, plain: int, keep: bool) -> int:
        """The L2 entry that makes its cluster read as zeroes; frees
        (deferred) what it no longer uses."""
        kind = self._kind(entry) if entry else UNALLOCATED
        if kind in (UNALLOCATED, ZERO_PLAIN):
            return plain
        if kind == COMPRESSED:
            self._meta.allocator.defer_free(*compressed_host_range(entry, self._bits))
            return plain
        host = self._host(entry)
        if keep and self.version >= 3:
            return host | OFLAG_COPIED | OFLAG_ZERO
        if keep:
            pwrite_all(self._fd, bytes(self.cluster_size), host)
            return entry
        self._meta.allocator.defer_free(host, self.cluster_size)
        return plain
