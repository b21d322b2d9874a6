"""WriteCacheOverlay: the standard-mode write cache, copy-on-write in a file.

Many devices share one read-only vDisk; each device gets one overlay. Its
writes land in a sparse cache file the size of the disk (offsets map 1:1, so
no allocation table), and a BlockMap says, per block, whether to read from
below (BELOW), from the cache file (CACHED) or to return zeroes (ZERO).

Rules:
- The layer below is never written to (it may be shared and read-only).
- Whole blocks are handled as runs: an aligned 1 MiB write is one pwrite to
  the cache file and one map update. A partially written block is read
  (through the overlay's own state: below, zeroes or the cache), patched and
  written back whole; a block already CACHED is patched in place.
- zero and trim turn whole blocks into ZERO (and punch them out of the cache
  file to free space); partial blocks get zero bytes written into them.
  trim is advisory: where a partial block would need new cache space beyond
  the limit, it is left as it is instead of failing.
- Reads split the range into runs of equal state; a range all in one state
  costs one call (one next.pread when it is all BELOW). try_pread does the
  same for a range in one state and reads a mixed range at once.
- `limit_bytes` bounds the CACHED blocks (count x block_size). A write or
  zero that would pass it raises OSError(ENOSPC) before changing anything.
- flush and FUA do nothing: the cache lives only as long as this process and
  the device's boot; nothing in it must survive a crash.
- Mutations hold a lock, so one instance may be shared by all connections of
  a device, across threads too; reads take no lock.
- Ranges are not checked here (CheckedStack does that once).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable

from vdfarm.block import fallocate as fa
from vdfarm.block.blockmap import BELOW, CACHED, ZERO, BlockMap, Piece, split_range
from vdfarm.block.layer import (
    EXTENT_HOLE,
    EXTENT_ZERO,
    FULL_CAPABILITIES,
    Buffer,
    Capabilities,
    Extent,
    Layer,
    add_extent,
    add_extents_below,
)
from vdfarm.block.nowait import ColdRead, try_pread_fd
from vdfarm.block.raw import pread_exact, pread_into, pwrite_all

_CAPABILITIES = FULL_CAPABILITIES


class WriteCacheOverlay(Layer):
    """Copy-on-write over `next` into the sparse file `cache_path`."""

    def __init__(
        self,
        next: Layer,
        cache_path: str | os.PathLike[str],
        block_size: int = 4096,
        limit_bytes: int | None = None,
    ) -> None:
        """Create the cache file (a new file: one that exists is refused) at
        the size of `next`.

        Raises ValueError for a block size that is not a power of two or a
        negative limit, OSError if the cache file cannot be created (EEXIST
        if something is already at its path).
        """
        super().__init__(next)
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, not {block_size}")
        if limit_bytes is not None and limit_bytes < 0:
            raise ValueError(f"limit_bytes must be >= 0, not {limit_bytes}")
        self.cache_path = os.fspath(cache_path)
        self.block_size = block_size
        self.limit_bytes = limit_bytes
        self._size = next.size
        self._lock = threading.Lock()
        self._map = BlockMap(-(-self._size // block_size))
        # A new file only: never one that exists, never through a link.
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self.cache_path, flags, 0o600)
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self.close()
            raise

    @property
    def size(self) -> int:
        return self._size

    @property
    def used_bytes(self) -> int:
        """Cache space in use: CACHED blocks x block_size."""
        return self._map.cached_count * self.block_size

    def capabilities(self) -> Capabilities:
        return _CAPABILITIES

    # -- reads ---------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """Raises the OSError of the layer below or of the cache file."""
        if length <= 0:
            return b""
        bs = self.block_size
        first = offset // bs
        end = (offset + length + bs - 1) // bs
        state = self._map.uniform_state(first, end)
        if state == BELOW:
            return self.next.pread(offset, length)
        if state == CACHED:
            return pread_exact(self._fd, offset, length)
        if state == ZERO:
            return bytes(length)
        return self._pread_mixed(offset, length, first, end)

    def try_pread(self, offset: int, length: int) -> bytes | bytearray | memoryview | ColdRead:
        """pread from the page cache, else a ColdRead: all BELOW asks the
        layer below, all CACHED the cache file; a range of mixed states is
        read at once (rare: a partly written range). Raises like pread."""
        if length <= 0:
            return b""
        bs = self.block_size
        first = offset // bs
        end = (offset + length + bs - 1) // bs
        state = self._map.uniform_state(first, end)
        if state == BELOW:
            return self.next.try_pread(offset, length)
        if state == CACHED:
            return try_pread_fd(self._fd, offset, length)
        if state == ZERO:
            return bytes(length)
        return self._pread_mixed(offset, length, first, end)

    def file_ranges(self, offset: int, length: int) -> list[tuple[int, int, int]] | None:
        """Cache-file pieces for CACHED runs, the lower layer's for BELOW
        runs; None if any block reads as ZERO or the lower layer says None."""
        if length <= 0:
            return []
        bs = self.block_size
        first = offset // bs
        end = (offset + length + bs - 1) // bs
        state = self._map.uniform_state(first, end)
        if state == BELOW:
            return self.next.file_ranges(offset, length)
        if state == CACHED:
            return [(self._fd, offset, length)]
        ranges: list[tuple[int, int, int]] = []
        for run_state, start, stop in self._clip_runs(self._map.runs(first, end), offset, length):
            if run_state == CACHED:
                ranges.append((self._fd, start, stop - start))
            elif run_state == BELOW:
                lower = self.next.file_ranges(start, stop - start)
                if lower is None:
                    return None
                ranges.extend(lower)
            else:
                return None
        return ranges

    def _pread_mixed(self, offset: int, length: int, first: int, end: int) -> bytearray:
        """Read a range whose blocks are in several states, one call per run.

        (Measured: reading the range whole from below and from the cache file
        and splicing is not faster; its big buffers cost page faults.)
        """
        out = bytearray(length)
        view = memoryview(out)
        for state, start, stop in self._clip_runs(self._map.runs(first, end), offset, length):
            if state == BELOW:
                view[start - offset : stop - offset] = self.next.pread(start, stop - start)
            elif state == CACHED:
                pread_into(self._fd, view[start - offset : stop - offset], start)
            # ZERO runs are already zero in `out`.
        return out

    def _clip_runs(
        self, runs: Iterable[tuple[int, int, int]], offset: int, length: int
    ) -> list[tuple[int, int, int]]:
        """Block runs as (state, start, stop) in bytes, clipped to
        [offset, offset+length)."""
        bs = self.block_size
        stop = offset + length
        clipped = [(state, run_first * bs, run_end * bs) for state, run_first, run_end in runs]
        if clipped:
            state, start, end = clipped[0]
            clipped[0] = (state, max(start, offset), end)
            state, start, end = clipped[-1]
            clipped[-1] = (state, start, min(end, stop))
        return clipped

    def _byte_runs(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """All runs of [offset, offset+length) as (state, start, stop) bytes."""
        bs = self.block_size
        first, end = offset // bs, (offset + length + bs - 1) // bs
        return self._clip_runs(self._map.runs(first, end), offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """CACHED → data, ZERO → hole+zero, BELOW → what the layer below says.

        Raises the OSError of the layer below; OSError(EIO) if it answers
        with no extent.
        """
        out: list[Extent] = []
        for state, start, stop in self._byte_runs(offset, length):
            if state == BELOW:
                add_extents_below(out, self.next, start, stop)
            else:
                add_extent(out, stop - start, 0 if state == CACHED else EXTENT_HOLE | EXTENT_ZERO)
        return out

    def cache(self, offset: int, length: int) -> None:
        """Prefetch: BELOW runs ask the layer below, CACHED runs the kernel.

        Raises the OSError of the layer below or of posix_fadvise.
        """
        if length <= 0:
            return
        for state, start, stop in self._byte_runs(offset, length):
            if state == BELOW:
                self.next.cache(start, stop - start)
            elif state == CACHED:
                os.posix_fadvise(self._fd, start, stop - start, os.POSIX_FADV_WILLNEED)

    # -- writes --------------------------------------------------------------

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Raises OSError(ENOSPC) past `limit_bytes` (nothing written), or the
        OSError of the cache file / of reading the layer below."""
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        length = len(view)
        if length == 0:
            return
        pieces = split_range(offset, length, self.block_size, self._size)
        first, end = pieces[0].first, pieces[-1].end
        with self._lock:
            new_blocks = (end - first) - self._map.count(CACHED, first, end)
            self._check_limit(new_blocks, "write")
            for piece in pieces:
                part = view[piece.start - offset : piece.stop - offset]
                if piece.whole:
                    pwrite_all(self._fd, part, piece.start)
                    self._map.set(piece.first, piece.end, CACHED)
                else:
                    self._patch_block(piece, part)

    def zero(
        self,
        offset: int,
        length: int,
        may_trim: bool = False,
        fua: bool = False,
        fast: bool = False,
    ) -> None:
        """Always fast. Raises OSError(ENOSPC) if zeroing partial blocks
        would pass `limit_bytes` (nothing changed), or the OSError of the
        cache file / of reading the layer below."""
        self._zero(offset, length, strict=True)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Like zero, but never fails for lack of cache space (partial blocks
        are then left alone). Raises the OSError of the cache file."""
        self._zero(offset, length, strict=False)

    def flush(self) -> None:
        """Nothing to do: the cache is thrown away at the next boot."""

    def _zero(self, offset: int, length: int, strict: bool) -> None:
        if length <= 0:
            return
        pieces = split_range(offset, length, self.block_size, self._size)
        with self._lock:
            whole = [p for p in pieces if p.whole]
            partial = [p for p in pieces if not p.whole and self._map.state(p.first) != ZERO]
            freed = sum(self._map.count(CACHED, p.first, p.end) for p in whole)
            new_blocks = sum(self._map.state(p.first) == BELOW for p in partial)
            if self._over_limit(new_blocks - freed):
                if strict:
                    self._check_limit(new_blocks - freed, "write zeroes")
                partial = [p for p in partial if self._map.state(p.first) != BELOW]
            for piece in whole:
                self._zero_blocks(piece)
            for piece in partial:
                self._patch_block(piece, bytes(piece.stop - piece.start))

    def _zero_blocks(self, piece: Piece) -> None:
        """Mark whole blocks ZERO; give their cache space back."""
        if self._map.count(CACHED, piece.first, piece.end):
            # ZERO blocks are never read from the file, so a hole is only
            # an economy: where it cannot be punched, nothing is lost.
            fa.call_if_supported(fa.punch_hole, self._fd, piece.start, piece.stop - piece.start)
        self._map.set(piece.first, piece.end, ZERO)

    def _patch_block(self, piece: Piece, part: Buffer) -> None:
        """Write `part` into one partially covered block, making it CACHED."""
        bs = self.block_size
        state = self._map.state(piece.first)
        if state == CACHED:
            pwrite_all(self._fd, part, piece.start)
            return
        block_start = piece.first * bs
        block_length = min(bs, self._size - block_start)
        if state == ZERO:
            block = bytearray(block_length)
        else:
            block = bytearray(self.next.pread(block_start, block_length))
        block[piece.start - block_start : piece.stop - block_start] = part
        pwrite_all(self._fd, block, block_start)
        self._map.set(piece.first, piece.end, CACHED)

    def _over_limit(self, new_blocks: int) -> bool:
        if self.limit_bytes is None or new_blocks <= 0:
            return False
        return (self._map.cached_count + new_blocks) * self.block_size > self.limit_bytes

    def _check_limit(self, new_blocks: int, what: str) -> None:
        if self._over_limit(new_blocks):
            raise OSError(
                errno.ENOSPC,
                f"{what} needs {new_blocks * self.block_size} more bytes of write "
                f"cache; {self.used_bytes} of {self.limit_bytes} in use",
            )

    # -- life cycle ----------------------------------------------------------

    def reset(self) -> None:
        """Forget every write: all blocks BELOW, cache file emptied.

        Raises the OSError of ftruncate.
        """
        with self._lock:
            self._map.reset()
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, self._size)

    def close(self) -> None:
        """Close and delete the cache file (twice is harmless)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
            try:
                os.unlink(self.cache_path)
            except FileNotFoundError:
                pass
            self._map.close()
