"""Qcow2File: one qcow2 file as a layer, over the layer of its backing file.

A vDisk version is a qcow2 delta whose backing file is its parent version
(or the base raw file); the caller opens the chain bottom-up and hands each
file its backing layer. Reading an unallocated cluster reads the backing
layer (zeroes without one, and past the end of a shorter backing).

Rules:
- Read path: `resolve(offset, length)` says where each byte lives, through
  the whole chain, as pieces `(src, pos, length)` (see qcow2_pieces): src
  an fd (read at host offset pos), None (zeroes), bytes (a decompressed
  cluster, from pos) or a backing Layer with no file range there (its pread
  at pos). A backing Qcow2File is asked through `resolve_below`, any other
  backing through `file_ranges`; our `file_ranges` is `resolve` when every
  piece is an fd. Per *granule* (the smallest cluster size in the chain)
  the answer is cached when it is one piece, so a 4 KiB read whose data
  lives five files down costs one dict lookup and one os.pread. The cache
  is dropped for the clusters this file writes; backing files are immutable
  (qcow2 requires it) and are never invalidated. Only the file a read
  enters by caches; the files below it answer from their own cache if they
  have one, but do not fill it.
- Write path (read_only=False): new data clusters, L2 tables and refcount
  blocks are appended at the end of the file; a partial write into a
  cluster not yet owned copies the rest from its old content (backing file,
  zeroes or a compressed cluster). Metadata is write-back and is written in
  crash-safe order by flush() (see qcow2_meta); flush() ends with fdatasync.
  close() flushes.
- zero(): v3 sets the zero flag on whole clusters (keeping the host cluster
  unless may_trim); v2 can only drop clusters when there is no backing file,
  else it writes zeroes. Partial clusters get zero bytes written, also with
  `fast` (at most two clusters: cheap enough); `fast` fails on v2 only.
- trim(): whole clusters only, like zero(may_trim=True): they read as zeroes
  afterwards (never the backing file's older data); partial clusters and, on
  v2 with a backing file, everything is left as it is (trim is advisory).
- Not supported for writing: internal snapshots, dirty (lazy refcounts) or
  corrupt-marked images: refused at open with Qcow2UnsupportedError. Reads
  of those work.
- One instance per file per process. Writes, zeroes, trims, flush and close
  hold a lock, so flush may run in a worker thread (as the stream service
  runs it) while the event loop goes on; reads take no lock (they never
  write metadata back, and what a flush does cannot change their answer).
- Ranges are not checked here (CheckedStack does that once).
"""

from __future__ import annotations

import errno
import os
import threading
import zlib

from vdfarm.block.layer import EXTENT_HOLE, EXTENT_ZERO, Capabilities, Extent, Layer
from vdfarm.block.qcow2_format import (
    COMPRESSED,
    NORMAL,
    OFFSET_MASK,
    OFLAG_COPIED,
    OFLAG_ZERO,
    UNALLOCATED,
    ZERO_ALLOC,
    ZERO_PLAIN,
    Qcow2FormatError,
    Qcow2UnsupportedError,
    compressed_host_range,
    compressed_location,
    l2_kind,
)
from vdfarm.block.qcow2_meta import Qcow2Metadata, corrupt, read_header
from vdfarm.block.qcow2_pieces import (
    add_extent,
    add_piece,
    clip_pieces,
    pwritev_all,
    read_pieces,
)
from vdfarm.block.raw import pwrite_all

HOLE_ZERO = EXTENT_HOLE | EXTENT_ZERO
_DECOMPRESSED_KEEP = 16
_FORGET_ONE_BY_ONE = 4096


def qcow2_info(path: str | os.PathLike) -> dict:
    """The header facts of a qcow2 file: size, cluster_size, version,
    backing_file, backing_format, dirty, corrupt, snapshots.

    Raises Qcow2FormatError (not qcow2 / corrupt), Qcow2UnsupportedError,
    or the OSError of open/read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header, backing = read_header(fd)
    finally:
        os.close(fd)
    return {
        "size": header.size,
        "cluster_size": header.cluster_size,
        "version": header.version,
        "backing_file": backing,
        "backing_format": header.backing_format,
        "dirty": header.is_dirty,
        "corrupt": header.is_corrupt,
        "snapshots": header.nb_snapshots,
    }


class Qcow2File(Layer):
    """A qcow2 image file over the layer of its backing file (or None)."""

    def __init__(
        self,
        path: str | os.PathLike,
        backing: Layer | None,
        read_only: bool,
        l2_cache_bytes: int = 32 << 20,
        map_cache_entries: int = 1 << 18,
    ) -> None:
        """Open `path`. The caller resolves and opens the backing file;
        compare it with `backing_file_name` / `backing_format`.

        Raises Qcow2FormatError (not qcow2, corrupt header or L1 table),
        Qcow2UnsupportedError (feature not supported, or not writable as
        asked), or the OSError of open/read.
        """
        super().__init__(None)
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        self._fd = os.open(path, flags)
        try:
            header, self.backing_file_name = read_header(self._fd)
            if not read_only:
                _check_writable_header(header)
            self._meta = Qcow2Metadata(self._fd, header, not read_only, l2_cache_bytes)
            if not read_only:
                self._meta.clear_autoclear_features()
        except BaseException:
            os.close(self._fd)
            raise
        self.path = os.fspath(path)
        self.read_only = read_only
        self.backing = backing
        self.backing_format = header.backing_format
        self.version = header.version
        self.cluster_size = header.cluster_size
        self._size = header.size
        self._bits = header.cluster_bits
        self._l2_bits = header.cluster_bits - 3
        self._l2_mask = (1 << self._l2_bits) - 1
        self._backing_size = backing.size if backing is not None else 0
        self._backing_resolve = getattr(backing, "resolve_below", None)
        self.granule_bits = min(self._bits, getattr(backing, "granule_bits", self._bits))
        self._map: dict[int, tuple] = {}  # granule -> (fd | None, delta, end)
        self._layer_map: dict[int, tuple] = {}  # granule -> (Layer, delta, end)
        self._map_max = map_cache_entries
        self._decompressed: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._caps = Capabilities(
            read_only=read_only,
            can_flush=True,
            can_fua=not read_only,
            can_trim=not read_only,
            can_zero=not read_only,
            can_fast_zero=not read_only and self.version >= 3,
            can_cache=True,
            can_extents=True,
            can_multi_conn=True,
        )
        self.pread = self._make_fast_pread()

    @property
    def size(self) -> int:
        return self._size

    def capabilities(self) -> Capabilities:
        return self._caps

    # -- reads ---------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes | bytearray:
        """Raises OSError(EIO) for corrupt metadata or a short file, or what
        the backing layer raises. (Each instance shadows this method with
        the closure of `_make_fast_pread`, which ends up here on a miss.)"""
        return read_pieces(self.resolve(offset, length), length)

    def _make_fast_pread(self):
        """The read hot path: a granule cached in `_map` as (fd, delta, end)
        costs one dict subscript and one os.pread; as (None, 0, end), one
        bytes(). A closure, so that all it needs is a local; the granule's
        end is cached too, so that the does-it-fit test is one addition
        (measured: attribute loads and int arithmetic were a third of a
        page-cached 4 KiB read)."""
        bits = self.granule_bits
        cached = self._map
        pread = os.pread
        slow = self._resolved_pread

        def fast_pread(offset: int, length: int) -> bytes | bytearray:
            try:
                fd, delta, end = cached[offset >> bits]
            except KeyError:
                return slow(offset, length)
            if offset + length <= end:
                if fd is None:
                    return bytes(length)
                data = pread(fd, length, offset + delta)
                if len(data) == length:
                    return data
            return slow(offset, length)

        fast_pread.__doc__ = Qcow2File.pread.__doc__
        return fast_pread

    def _resolved_pread(self, offset: int, length: int) -> bytes | bytearray:
        return read_pieces(self.resolve(offset, length), length)

    def resolve(self, offset: int, length: int) -> list[tuple]:
        """Where [offset, offset+length) lives: pieces (src, pos, length),
        see the module docstring; neighbours that continue each other are
        merged. Raises OSError(EIO) for corrupt metadata."""
        return self._resolve(offset, length, fill=True)

    def resolve_below(self, offset: int, length: int) -> list[tuple]:
        """resolve() for the layer above in the chain: uses this layer's
        cache but does not fill it (the caller caches the answer itself)."""
        return self._resolve(offset, length, fill=False)

    def _resolve(self, offset: int, length: int, fill: bool) -> list[tuple]:
        pieces: list[tuple] = []
        bits = self.granule_bits
        lookup = self._map.get
        stop = offset + length
        pos = offset
        while pos < stop:
            granule = pos >> bits
            end = min((granule + 1) << bits, stop)
            hit = lookup(granule)
            if hit is not None:  # fd or zeroes: merged inline, the common case
                fd, delta, _ = hit
                at = pos + delta if fd is not None else 0
                if pieces:
                    last_fd, last_at, last_len = pieces[-1]
                    if last_fd == fd and (fd is None or last_at + last_len == at):
                        pieces[-1] = (last_fd, last_at, last_len + end - pos)
                        pos = end
                        continue
                pieces.append((fd, at, end - pos))
            else:
                for piece in self._resolve_granule(granule, pos, end, fill):
                    add_piece(pieces, *piece)
            pos = end
        return pieces

    def _resolve_granule(self, granule: int, pos: int, end: int, fill: bool) -> list[tuple]:
        """Pieces of [pos, end) inside `granule`, which `_map` does not hold;
        with `fill`, cache the granule's answer when it is one piece."""
        hit = self._layer_map.get(granule)
        if hit is not None:
            return [(hit[0], pos + hit[1], end - pos)]
        if not fill:
            return self._resolve_own(pos, end - pos)
        start = granule << self.granule_bits
        own = self._resolve_own(start, self._granule_end(start) - start)
        hit = self._cache_granule(granule, own)
        if hit is None:
            return clip_pieces(own, pos - start, end - pos)
        src, delta, _ = hit
        return [(src, pos + delta if src is not None else 0, end - pos)]

    def file_ranges(self, offset: int, length: int) -> list[tuple[int, int, int]] | None:
        """The (fd, file offset, length) pieces of the range through the
        chain, for sendfile(2); None if some of it is zeroes, compressed, or
        in a layer without file ranges. Raises OSError(EIO) like pread."""
        pieces = self.resolve(offset, length)
        for src, _, _ in pieces:
            if src.__class__ is not int:
                return None
        return pieces

    def _granule_end(self, start: int) -> int:
        return min(start + (1 << self.granule_bits), self._size)

    def _cache_granule(self, granule: int, pieces: list[tuple]) -> tuple | None:
        """Cache and return (src, delta, end) for a granule that `pieces` (its
        own resolution) maps as one cacheable piece; None otherwise. Guest
        offset + delta is the position in src; end is the granule's end."""
        if len(pieces) != 1 or pieces[0][0].__class__ is bytes:
            return None
        src, pos, _ = pieces[0]
        cache = self._map if src is None or src.__class__ is int else self._layer_map
        if len(cache) >= self._map_max:
            cache.clear()
        start = granule << self.granule_bits
        cache[granule] = hit = (src, pos - start, self._granule_end(start))
        return hit

    def _resolve_own(self, offset: int, length: int) -> list[tuple]:
        """Resolve through this file's L2 tables, uncached."""
        pieces: list[tuple] = []
        bits, l2_bits, l2_mask = self._bits, self._l2_bits, self._l2_mask
        stop = offset + length
        pos = offset
        table_index, table = -1, None
        while pos < stop:
            cluster = pos >> bits
            end = min((cluster + 1) << bits, stop)
            if cluster >> l2_bits != table_index:
                table_index = cluster >> l2_bits
                table = self._meta.l2_table(table_index)
            entry = table[cluster & l2_mask] if table is not None else 0
            kind = self._kind(entry) if entry else UNALLOCATED
            within = pos & ((1 << bits) - 1)
            if kind == NORMAL:
                add_piece(pieces, self._fd, self._host(entry) + within, end - pos)
            elif kind == UNALLOCATED:
                self._backing_pieces(pieces, pos, end - pos)
            elif kind == COMPRESSED:
                add_piece(pieces, self._decompress(entry), within, end - pos)
            else:
                add_piece(pieces, None, 0, end - pos)
            pos = end
        return pieces

    def _backing_pieces(self, pieces: list, pos: int, length: int) -> None:
        """Pieces of the backing layer: its own resolution (a Qcow2File), its
        file ranges (a RawFile...), else the layer itself to pread from."""
        inside = max(0, min(length, self._backing_size - pos))
        if inside:
            if self._backing_resolve is not None:
                lower = self._backing_resolve(pos, inside)
            else:
                lower = self.backing.file_ranges(pos, inside) or [(self.backing, pos, inside)]
            for piece in lower:
                add_piece(pieces, *piece)
        if inside < length:
            add_piece(pieces, None, 0, length - inside)

    def _kind(self, entry: int) -> int:
        try:
            return l2_kind(entry, self.version)
        except Qcow2FormatError as exc:
            raise corrupt(str(exc)) from None

    def _host(self, entry: int) -> int:
        host = entry & OFFSET_MASK
        if host & (self.cluster_size - 1):
            raise corrupt(f"data cluster offset {host} is not cluster aligned")
        return host

    def _decompress(self, entry: int) -> bytes:
        """The whole guest cluster behind a compressed L2 entry (kept in a
        small cache). Raises OSError(EIO) for bad deflate data."""
        data = self._decompressed.get(entry)
        if data is not None:
            return data
        offset, length = compressed_location(entry, self._bits)
        raw = os.pread(self._fd, length, offset)
        try:
            inflater = zlib.decompressobj(-15)
            data = inflater.decompress(raw, self.cluster_size)
        except zlib.error as exc:
            raise corrupt(f"compressed cluster at {offset}: {exc}") from None
        if len(data) != self.cluster_size:
            raise corrupt(f"compressed cluster at {offset} is short")
        if len(self._decompressed) >= _DECOMPRESSED_KEEP:
            self._decompressed.clear()
        self._decompressed[entry] = data
        return data

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Data → 0, zero clusters → ZERO (HOLE too without a host
        cluster), unallocated → the backing layer's extents (HOLE|ZERO
        without one or past its end). Raises OSError(EIO) for corrupt
        metadata, or what the backing layer raises."""
        out: list[Extent] = []
        for kind, start, stop in self._kind_runs(offset, offset + length):
            if kind == UNALLOCATED:
                self._backing_extents(out, start, stop)
            elif kind in (NORMAL, COMPRESSED):
                add_extent(out, stop - start, 0)
            else:
                add_extent(out, stop - start, EXTENT_ZERO if kind == ZERO_ALLOC else HOLE_ZERO)
        return out

    def _kind_runs(self, offset: int, stop: int) -> list[list]:
        """[kind, start, stop] runs of equal L2 kind over [offset, stop)."""
        runs: list[list] = []
        pos = offset
        table_index, table = -1, None
        while pos < stop:
            cluster = pos >> self._bits
            end = min((cluster + 1) << self._bits, stop)
            if cluster >> self._l2_bits != table_index:
                table_index = cluster >> self._l2_bits
                table = self._meta.l2_table(table_index)
            entry = table[cluster & self._l2_mask] if table is not None else 0
            kind = self._kind(entry) if entry else UNALLOCATED
            if runs and runs[-1][0] == kind:
                runs[-1][2] = end
            else:
                runs.append([kind, pos, end])
            pos = end
        return runs

    def _backing_extents(self, out: list[Extent], start: int, stop: int) -> None:
        inside_end = max(start, min(stop, self._backing_size))
        pos = start
        while pos < inside_end:
            before = pos
            for extent in self.backing.extents(pos, inside_end - pos):
                take = min(extent.length, inside_end - pos)
                if take <= 0:
                    break
                add_extent(out, take, extent.flags)
                pos += take
            if pos == before:
                raise OSError(errno.EIO, f"no extents from the backing layer at {pos}")
        if inside_end < stop:
            add_extent(out, stop - inside_end, HOLE_ZERO)

    def cache(self, offset: int, length: int) -> None:
        """Read-ahead hint for every piece of the range. Raises OSError."""
        for src, pos, n in self.resolve(offset, length):
            if src.__class__ is int:
                os.posix_fadvise(src, pos, n, os.POSIX_FADV_WILLNEED)
            elif isinstance(src, Layer):
                src.cache(pos, n)

    # -- writes --------------------------------------------------------------

    def pwrite(self, offset: int, data, fua: bool = False) -> None:
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
        plan = []
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
                plan.append((cluster, None, entry, True))
                new_count += 1
        if new_count:
            host = self._meta.alloc.allocate(new_count)
            for i, (cluster, where, entry, fill) in enumerate(plan):
                if where is None:
                    plan[i] = (cluster, host, entry, fill)
                    host += self.cluster_size
            self._meta.note_data_written()
        for host, buffers in self._write_runs(plan, offset, view):
            pwritev_all(self._fd, buffers, host)
        self._link(plan, table, l2_offset)

    def _write_runs(self, plan: list, offset: int, view: memoryview) -> list:
        """Group the plan into (host offset, [buffers]) runs, contiguous on
        the host; clusters being (re)placed whole get their old content
        around the new bytes. Neighbouring slices of `view` become one."""
        runs: list = []  # [host start, host end, buffers, view end of the last buffer]
        stop = offset + len(view)
        cs = self.cluster_size
        for cluster, host, entry, fill in plan:
            start = cluster << self._bits
            ws, we = max(offset, start), min(stop, start + cs)
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
            run = runs[-1] if runs and runs[-1][1] == at and len(runs[-1][2]) < 512 else None
            if run is None:
                runs.append([at, end, buffers or [view[ws - offset : we - offset]], view_end])
            elif buffers is None and run[3] == ws - offset:
                run[2][-1] = view[ws - offset - len(run[2][-1]) : we - offset]
                run[1], run[3] = end, view_end
            else:
                run[2].extend(buffers or [view[ws - offset : we - offset]])
                run[1], run[3] = end, view_end
        return [(at, buffers) for at, _, buffers, _ in runs]

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
        inside = max(0, min(stop, self._backing_size, self._size) - start)
        data = self.backing.pread(start, inside) if inside else b""
        return bytes(data) + bytes(stop - start - inside)

    def _link(self, plan: list, table, l2_offset: int) -> None:
        """Point the L2 entries at the clusters just written."""
        changed = False
        for cluster, host, entry, fill in plan:
            if not fill:
                continue
            table[cluster & self._l2_mask] = host | OFLAG_COPIED
            changed = True
            if entry and self._kind(entry) == COMPRESSED:
                self._meta.alloc.defer_free(*compressed_host_range(entry, self._bits))
        if changed:
            self._meta.mark_l2_dirty(l2_offset)

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
        chunk = 1 << 20
        stop = min(stop, self._size)
        while start < stop:
            n = min(chunk, stop - start)
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
            new = self._dropped_entry(entry, plain, keep, cluster)
            if new != entry:
                table[index] = new
                changed = True
        if changed:
            self._meta.mark_l2_dirty(l2_offset)

    def _dropped_entry(self, entry: int, plain: int, keep: bool, cluster: int) -> int:
        """The L2 entry that makes `cluster` read as zeroes; frees (deferred)
        what it no longer uses."""
        kind = self._kind(entry) if entry else UNALLOCATED
        if kind in (UNALLOCATED, ZERO_PLAIN):
            return plain
        if kind == COMPRESSED:
            self._meta.alloc.defer_free(*compressed_host_range(entry, self._bits))
            return plain
        host = self._host(entry)
        if keep and self.version >= 3:
            return host | OFLAG_COPIED | OFLAG_ZERO
        if keep:
            pwrite_all(self._fd, bytes(self.cluster_size), host)
            return entry
        self._meta.alloc.defer_free(host, self.cluster_size)
        return plain

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

    def _forget(self, offset: int, length: int) -> None:
        """Drop the cached mapping of every granule in the clusters touched."""
        first = (offset >> self._bits) << (self._bits - self.granule_bits)
        end = (-(-(offset + length) >> self._bits)) << (self._bits - self.granule_bits)
        if end - first > _FORGET_ONE_BY_ONE:
            self._map.clear()
            self._layer_map.clear()
        else:
            for granule in range(first, end):
                self._map.pop(granule, None)
                self._layer_map.pop(granule, None)

    def close(self) -> None:
        """Flush (when writable) and close the file; twice is harmless.
        Raises the OSError of the flush (the file is closed anyway)."""
        if self._fd < 0:
            return
        try:
            if not self.read_only:
                self.flush()
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)
            self._map.clear()
            self._layer_map.clear()


def _check_writable_header(header) -> None:
    if header.nb_snapshots:
        raise Qcow2UnsupportedError("qcow2 images with internal snapshots are read-only here")
    if header.is_dirty:
        raise Qcow2UnsupportedError(
            "qcow2 image is dirty (lazy refcounts); repair it with qemu-img check -r all"
        )
    if header.is_corrupt:
        raise Qcow2UnsupportedError("qcow2 image is marked corrupt; repair it with qemu-img check")
