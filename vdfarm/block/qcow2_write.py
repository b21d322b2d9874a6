"""Qcow2Writer: the write path of a qcow2 file: allocate, copy around, link.

The third part of Qcow2File (vdfarm.block.qcow2), over Qcow2Resolver:
pwrite, flush, and the cluster writing that zero() reuses.

Rules:
- Only when opened writable (read_only=False); every public call checks
  that first and raises OSError(EPERM) otherwise.
- New data clusters, L2 tables and refcount blocks are appended at the end
  of the file (qcow2_alloc); a cluster this file does not own yet (the
  backing file's, zeroes, a compressed one) is written whole, its old
  content around the new bytes, before its L2 entry points at it.
- A cluster whose L2 entry lacks OFLAG_COPIED is shared (internal
  snapshots): OSError(EIO), nothing written.
- Data goes to the file at once (pwritev, runs contiguous on the host);
  metadata is write-back and is written in crash-safe order by flush()
  (qcow2_meta), which ends with fdatasync; FUA is a flush.
- Writes and flush hold `_lock` (so flush may run in a worker thread while
  the event loop goes on) and drop the granule cache of the clusters they
  touch before they change them.
"""

from __future__ import annotations

import errno
import os
import threading
from array import array

from vdfarm.block.layer import Buffer
from vdfarm.block.qcow2_format import (
    COMPRESSED,
    NORMAL,
    OFLAG_COPIED,
    UNALLOCATED,
    ZERO_ALLOC,
    compressed_host_range,
    corrupt,
)
from vdfarm.block.qcow2_pieces import pwritev_all
from vdfarm.block.qcow2_resolve import Qcow2Resolver

# A plan entry: (guest cluster, host offset, old L2 entry, write it whole?).
PlanEntry = tuple[int, int, int, bool]

_NOT_YET = -1  # the host offset of a plan entry still to be allocated
_MAX_RUN_BUFFERS = 512  # stays below IOV_MAX (1024) per pwritev


class Qcow2Writer(Qcow2Resolver):
    """The write path of one qcow2 file (a part of Qcow2File)."""

    _lock: threading.Lock  # set by Qcow2File.__init__

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Raises OSError(EPERM) when read-only, OSError(EIO) for corrupt
        metadata, or the OSError of the file / of reading the backing."""
        self._check_writable()
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not len(view):
            return
        with self._lock:
            self._forget(offset, len(view))
            self._write_range(offset, view)
            if fua:
                self._flush()

    def _write_range(self, offset: int, view: memoryview) -> None:
        first = offset >> self._bits
        last = (offset + len(view) - 1) >> self._bits
        while first <= last:
            span_last = min(last, first | self._l2_mask)
            self._write_clusters(first, span_last, offset, view)
            first = span_last + 1

    def _write_clusters(self, first: int, last: int, offset: int, view: memoryview) -> None:
        """Write the part of `view` (guest `offset`) in clusters
        [first, last], all under one L2 table."""
        l2_offset, table = self._meta.l2_for_write(first >> self._l2_bits)
        plan: list[PlanEntry] = []
        new_count = 0
        for cluster in range(first, last + 1):
            entry = table[cluster & self._l2_mask]
            kind = self._kind(entry) if entry else UNALLOCATED
            if kind in (NORMAL, ZERO_ALLOC) and not entry & OFLAG_COPIED:
                raise corrupt(f"cluster {cluster} is shared (snapshots?)")
            if kind == NORMAL:
                plan.append((cluster, self._host(entry), entry, False))
            elif kind == ZERO_ALLOC:
                plan.append((cluster, self._host(entry), entry, True))
            else:
                plan.append((cluster, _NOT_YET, entry, True))
                new_count += 1
        if new_count:
            host = self._meta.allocator.allocate(new_count)
            for i, (cluster, where, entry, fill) in enumerate(plan):
                if where == _NOT_YET:
                    plan[i] = (cluster, host, entry, fill)
                    host += self.cluster_size
            self._meta.note_data_written()
        for host, buffers in self._write_runs(plan, offset, view):
            pwritev_all(self._fd, buffers, host)
        self._link(plan, table, l2_offset)

    def _write_runs(
        self, plan: list[PlanEntry], offset: int, view: memoryview
    ) -> list[tuple[int, list[Buffer]]]:
        """Group the plan into (host offset, [buffers]) runs, contiguous on
        the host; clusters being (re)placed whole get their old content
        around the new bytes. Neighbouring slices of `view` become one."""
        runs: list[tuple[int, list[Buffer]]] = []
        # The last run: its buffers, host end, and where in `view` its last
        # buffer ends (None when that buffer is not a slice of `view`).
        run_buffers: list[Buffer] = []
        run_end = -1
        run_view_end: int | None = None
        stop = offset + len(view)
        cs = self.cluster_size
        for cluster, host, entry, fill in plan:
            start = cluster << self._bits
            ws, we = max(offset, start), min(stop, start + cs)
            buffers: list[Buffer] | None
            if fill and (ws > start or we < start + cs):
                buffers = [
                    self._old_bytes(entry, start, ws),
                    view[ws - offset : we - offset],
                    self._old_bytes(entry, we, start + cs),
                ]
                at, end, view_end = host, host + cs, None
            else:
                buffers = None
                at, end, view_end = host + (ws - start), host + (we - start), we - offset
            if not runs or run_end != at or len(run_buffers) >= _MAX_RUN_BUFFERS:
                run_buffers = buffers or [view[ws - offset : we - offset]]
                runs.append((at, run_buffers))
            elif buffers is None and run_view_end == ws - offset:
                run_buffers[-1] = view[ws - offset - len(run_buffers[-1]) : we - offset]
            else:
                run_buffers.extend(buffers or [view[ws - offset : we - offset]])
            run_end, run_view_end = end, view_end
        return runs

    def _old_bytes(self, entry: int, start: int, stop: int) -> bytes:
        """What guest bytes [start, stop) (in one cluster) read as now."""
        if stop <= start:
            return b""
        kind = self._kind(entry) if entry else UNALLOCATED
        if kind == COMPRESSED:
            within = start & (self.cluster_size - 1)
            return self._decompress(entry)[within : within + stop - start]
        if kind != UNALLOCATED:
            return bytes(stop - start)
        backing = self.backing
        inside = max(0, min(stop, self._backing_size, self._size) - start)
        data = backing.pread(start, inside) if inside and backing is not None else b""
        return bytes(data) + bytes(stop - start - inside)

    def _link(self, plan: list[PlanEntry], table: array[int], l2_offset: int) -> None:
        """Point the L2 entries at the clusters just written."""
        changed = False
        for cluster, host, entry, fill in plan:
            if not fill:
                continue
            table[cluster & self._l2_mask] = host | OFLAG_COPIED
            changed = True
            if entry and self._kind(entry) == COMPRESSED:
                self._meta.allocator.defer_free(*compressed_host_range(entry, self._bits))
        if changed:
            self._meta.mark_l2_dirty(l2_offset)

    def flush(self) -> None:
        """Write dirty metadata back in crash-safe order, then fdatasync.
        Nothing to do when read-only. Raises the OSError of the file."""
        if self.read_only:
            return
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._meta.write_back()
        os.fdatasync(self._fd)

    def _check_writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EPERM, f"{self.path} is open read-only")
