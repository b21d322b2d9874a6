"""BlockMap: where each block of a copy-on-write overlay is read from. No I/O.

A disk is cut into equal blocks (the last one may be short). Each block has
one state:

- BELOW  — never written here: read it from the layer below.
- CACHED — written here: read it from the overlay's cache file.
- ZERO   — trimmed or zeroed as a whole block: it reads as zeroes.

Rules:
- One byte per block, held in an anonymous private mmap rather than a
  bytearray: its pages are zero (= BELOW) until first written, so a 100 GiB
  disk costs no RAM until it is written, and reset() gives the RAM back.
- Everything works on runs, never in per-block Python loops: setting a range
  is one slice assignment, counting is one C count, runs are found by one C
  regular expression scan. Block ranges are half-open: [first, end).
- `cached_count` is kept exact, so limits need no scan.

`split_range` is the pure alignment arithmetic the overlay uses: it cuts a
byte range into a partial head block, a run of whole blocks and a partial
tail block.
"""

from __future__ import annotations

import mmap
import re
from typing import NamedTuple

BELOW = 0
CACHED = 1
ZERO = 2

_STATES = (BELOW, CACHED, ZERO)
_FILL = {state: bytes((state,)) for state in _STATES}
_RUN = re.compile(rb"\x00+|\x01+|\x02+")


class BlockMap:
    """One state per block for `block_count` blocks, all BELOW at first."""

    def __init__(self, block_count: int) -> None:
        """Raises ValueError if block_count < 0, OSError if mmap fails."""
        if block_count < 0:
            raise ValueError(f"block_count must be >= 0, not {block_count}")
        self.block_count = block_count
        self.cached_count = 0
        self._states = mmap.mmap(
            -1, max(block_count, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        )

    def state(self, block: int) -> int:
        """State of one block."""
        return self._states[block]

    def uniform_state(self, first: int, end: int) -> int | None:
        """The state shared by every block of [first, end), or None if mixed.

        `end` must be > `first`.
        """
        state = self._states[first]
        if end - first == 1:
            return state
        run = _RUN.match(self._states, first, end)  # never None: the range is not empty
        if run is not None and run.end() == end:
            return state
        return None

    def runs(self, first: int, end: int) -> list[tuple[int, int, int]]:
        """The maximal runs of equal state covering [first, end), in order,
        as (state, run_first, run_end)."""
        states = self._states
        return [(states[m.start()], *m.span()) for m in _RUN.finditer(states, first, end)]

    def count(self, state: int, first: int, end: int) -> int:
        """How many blocks of [first, end) are in `state`."""
        if end - first == 1:
            return int(self._states[first] == state)
        return self._states[first:end].count(state)

    def set(self, first: int, end: int, state: int) -> None:
        """Put every block of [first, end) in `state`."""
        count = end - first
        if count <= 0:
            return
        if count == 1:
            was_cached = self._states[first] == CACHED
            self._states[first] = state
            self.cached_count += (state == CACHED) - was_cached
            return
        cached_before = self.count(CACHED, first, end)
        self._states[first:end] = _FILL[state] * count
        self.cached_count += (count if state == CACHED else 0) - cached_before

    def reset(self) -> None:
        """Every block back to BELOW; the map's RAM goes back to the system."""
        self._states.madvise(mmap.MADV_DONTNEED)
        self.cached_count = 0

    def close(self) -> None:
        """Unmap (twice is harmless)."""
        self._states.close()


class Piece(NamedTuple):
    """Part of a byte range that lies in blocks [first, end) and bytes
    [start, stop) of the disk. `whole` pieces cover their blocks entirely;
    partial pieces are one block, partly covered."""

    first: int
    end: int
    start: int
    stop: int
    whole: bool


def split_range(offset: int, length: int, block_size: int, disk_size: int) -> list[Piece]:
    """Cut [offset, offset+length) into at most three pieces: a partial head
    block, the whole blocks, a partial tail block (each only if present).

    A last block shorter than `block_size` (disk size not a multiple of it)
    is whole when the range reaches the end of the disk.
    """
    pieces: list[Piece] = []
    stop = offset + length
    if length <= 0:
        return pieces
    if offset % block_size:
        block = offset // block_size
        head_stop = min((block + 1) * block_size, stop)
        pieces.append(Piece(block, block + 1, offset, head_stop, False))
        offset = head_stop
        if offset >= stop:
            return pieces
    first = offset // block_size
    end = -(-stop // block_size) if stop >= disk_size else stop // block_size
    if end > first:
        whole_stop = min(end * block_size, stop)
        pieces.append(Piece(first, end, offset, whole_stop, True))
        offset = whole_stop
    if offset < stop:
        block = offset // block_size
        pieces.append(Piece(block, block + 1, offset, stop, False))
    return pieces
