"""MemoryDisk: a whole disk in RAM (a bytearray), a complete layer.

Used by tests, and by property tests as a model; it has the semantics of a
RawFile on a file system that supports everything.

Rules:
- Every method works, none is a stub. trim zeroes the range (RAM cannot be
  given back piecewise; zeroes are what a trimmed RawFile reads too), so trim
  and zero are the same operation here.
- Extents are derived from the content, not tracked: the range is looked at in
  aligned 4 KiB granules and every all-zero granule reports EXTENT_ZERO (it
  reads as zeroes; it is never reported as a hole, since RAM is allocated),
  everything else reports data (0). So extents are always true, just coarse.
- Ranges are not checked here (CheckedStack does that once).
"""

from __future__ import annotations

from vdfarm.block.layer import (
    EXTENT_ZERO,
    FULL_CAPABILITIES,
    Buffer,
    Capabilities,
    Extent,
    Layer,
    add_extent,
)

EXTENT_GRANULE = 4096

_CAPABILITIES = FULL_CAPABILITIES


class MemoryDisk(Layer):
    """A disk of `size` bytes held in a bytearray, zero-filled unless
    `initial` (bytes-like, at most `size` long) gives its first bytes."""

    def __init__(self, size: int, initial: Buffer | None = None) -> None:
        """Raises ValueError if size < 0 or `initial` does not fit."""
        super().__init__(None)
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size}")
        self._data = bytearray(size)
        if initial is not None:
            if len(initial) > size:
                raise ValueError("initial content is larger than the disk")
            self._data[: len(initial)] = initial
        self.flush_count = 0

    @property
    def size(self) -> int:
        return len(self._data)

    def capabilities(self) -> Capabilities:
        return _CAPABILITIES

    def pread(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset : offset + length])

    def try_pread(self, offset: int, length: int) -> bytes:
        """In RAM: always the bytes."""
        return bytes(self._data[offset : offset + length])

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        view = memoryview(data).cast("B")
        self._data[offset : offset + len(view)] = view

    def flush(self) -> None:
        """Nothing to make durable; counted so tests can see it arrived."""
        self.flush_count += 1

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self._fill_zero(offset, length)

    def zero(
        self,
        offset: int,
        length: int,
        may_trim: bool = False,
        fua: bool = False,
        fast: bool = False,
    ) -> None:
        self._fill_zero(offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """All-zero 4 KiB granules report EXTENT_ZERO, the rest data (0)."""
        stop = offset + length
        out: list[Extent] = []
        pos = offset
        while pos < stop:
            granule_end = min((pos // EXTENT_GRANULE + 1) * EXTENT_GRANULE, stop)
            flags = EXTENT_ZERO if self._is_zero(pos, granule_end) else 0
            add_extent(out, granule_end - pos, flags)
            pos = granule_end
        return out

    def file_ranges(self, offset: int, length: int) -> list[tuple[int, int, int]] | None:
        """None: RAM is no file (the caller uses pread)."""
        return None

    def cache(self, offset: int, length: int) -> None:
        """Already in RAM: nothing to do."""

    def _fill_zero(self, offset: int, length: int) -> None:
        self._data[offset : offset + length] = bytes(length)

    def _is_zero(self, start: int, stop: int) -> bool:
        return self._data.count(0, start, stop) == stop - start
