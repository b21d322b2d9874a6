"""Qcow2Reader: what one qcow2 file says about its guest clusters, uncached.

The first part of Qcow2File (vdfarm.block.qcow2), which puts its parts
together: this one reads the file's own L2 tables. It holds the state every
part shares (set once by Qcow2File.__init__) and answers, for a guest range:
where its bytes live (`_resolve_own`, as qcow2_pieces pieces, going to the
backing layer for unallocated clusters), how it is allocated (`extents`),
and what a single L2 entry means (`_kind`, `_host`, `_decompress`).

Rules:
- Nothing here caches a resolution; the granule cache in front of it is
  qcow2_resolve's job. L2 tables come from Qcow2Metadata (which caches
  them), decompressed clusters from a small cache of their own.
- An unallocated cluster reads the backing layer: its own resolution when
  it is a Qcow2File (`resolve_below`), else its file ranges, else the layer
  itself (its pread); past the backing layer's end, or without one, zeroes.
- Corrupt metadata met here raises OSError(EIO) (qcow2_format.corrupt).
- Nothing here writes; reads take no lock.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence

from vdfarm.block.layer import (
    EXTENT_HOLE,
    EXTENT_ZERO,
    Extent,
    Layer,
    add_extent,
    add_extents_below,
)
from vdfarm.block.qcow2_format import (
    COMPRESSED,
    NORMAL,
    OFFSET_MASK,
    UNALLOCATED,
    ZERO_ALLOC,
    Qcow2FormatError,
    compressed_location,
    corrupt,
    l2_kind,
)
from vdfarm.block.qcow2_meta import Qcow2Metadata
from vdfarm.block.qcow2_pieces import Piece, add_piece

HOLE_ZERO = EXTENT_HOLE | EXTENT_ZERO
_DECOMPRESSED_KEEP = 16


class Qcow2Reader(Layer):
    """The uncached read side of one qcow2 file (a part of Qcow2File)."""

    # -- state shared by every part, set by Qcow2File.__init__ ---------------
    path: str
    read_only: bool
    backing: Layer | None
    backing_file_name: str | None
    backing_format: str | None
    version: int
    cluster_size: int
    granule_bits: int  # the smallest cluster size in the chain, as bits
    _fd: int
    _meta: Qcow2Metadata
    _size: int
    _bits: int  # cluster bits
    _l2_bits: int  # bits of an index into an L2 table
    _l2_mask: int
    _backing_size: int
    _backing_resolve: Callable[[int, int], list[Piece]] | None
    _decompressed: dict[int, bytes]

    def _resolve_own(self, offset: int, length: int) -> list[Piece]:
        """Resolve through this file's L2 tables, uncached."""
        pieces: list[Piece] = []
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

    def _backing_pieces(self, pieces: list[Piece], pos: int, length: int) -> None:
        """Pieces of the backing layer: its own resolution (a Qcow2File), its
        file ranges (a RawFile...), else the layer itself to pread from."""
        backing = self.backing
        inside = max(0, min(length, self._backing_size - pos))
        if inside and backing is not None:
            lower: Sequence[Piece]
            if self._backing_resolve is not None:
                lower = self._backing_resolve(pos, inside)
            else:
                lower = backing.file_ranges(pos, inside) or [(backing, pos, inside)]
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

    # -- extents -------------------------------------------------------------

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

    def _kind_runs(self, offset: int, stop: int) -> list[list[int]]:
        """[kind, start, stop] runs of equal L2 kind over [offset, stop)."""
        runs: list[list[int]] = []
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
        if self.backing is not None and start < inside_end:
            add_extents_below(out, self.backing, start, inside_end)
        if inside_end < stop:
            add_extent(out, stop - inside_end, HOLE_ZERO)
