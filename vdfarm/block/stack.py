"""CheckedStack: the top of every stack; checks ranges and flags once.

The layers below trust their arguments (the nbdkit backend pattern), so every
request of the stream service goes through here first.

Rules (errnos follow the NBD spec's "Error values" section):
- offset or length negative → EINVAL.
- Past the end of the disk: EINVAL for read, trim, cache and block status;
  ENOSPC for write and write zeroes ("SHOULD return NBD_ENOSPC if it
  receives a write request including one or more sectors beyond the size").
- write, trim or write zeroes on a read-only stack → EPERM (checked first).
- A command the stack cannot do (flush, trim, zero, cache, extents without
  their capability), or FUA without can_fua → EINVAL.
- Fast zero without can_fast_zero → ENOTSUP.
- Length 0 is accepted and does nothing (the spec leaves it unspecified),
  except for extents, which must answer at least one extent: EINVAL.
- Size and capabilities are read once, at construction.
"""

from __future__ import annotations

import errno

from vdfarm.block.layer import Buffer, Capabilities, Extent, Layer
from vdfarm.block.nowait import ColdRead


class CheckedStack(Layer):
    """Validates every request, then passes it to `top`."""

    def __init__(self, top: Layer) -> None:
        super().__init__(top)
        self._size = top.size
        self._caps = top.capabilities()

    @property
    def size(self) -> int:
        return self._size

    def capabilities(self) -> Capabilities:
        return self._caps

    def pread(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """Raises OSError(EINVAL) for a bad range, else what the stack raises."""
        if offset < 0 or length < 0 or offset + length > self._size:
            raise self._range_error("read", offset, length, errno.EINVAL)
        if length == 0:
            return b""
        return self.next.pread(offset, length)

    def try_pread(self, offset: int, length: int) -> bytes | bytearray | memoryview | ColdRead:
        """Raises OSError(EINVAL) for a bad range, else what the stack raises."""
        if offset < 0 or length < 0 or offset + length > self._size:
            raise self._range_error("read", offset, length, errno.EINVAL)
        if length == 0:
            return b""
        return self.next.try_pread(offset, length)

    def check_fua(self, what: str) -> None:
        """For a caller that does a FUA change as the change without FUA
        followed by a flush (so the flush may run in a thread): raises what
        the change with FUA would raise for the flag — OSError(EPERM) when
        read-only, OSError(EINVAL) without can_fua (or can_flush)."""
        self._check_writable(what, True)
        self._require(self._caps.can_flush, "flush")

    def file_ranges(self, offset: int, length: int) -> list[tuple[int, int, int]] | None:
        """Raises OSError(EINVAL) for a bad range, like pread."""
        if offset < 0 or length < 0 or offset + length > self._size:
            raise self._range_error("read", offset, length, errno.EINVAL)
        return self.next.file_ranges(offset, length)

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """`data` is a bytes-like object of bytes. Raises OSError: EPERM
        (read-only), EINVAL (bad flag or negative range), ENOSPC (past the
        end), else what the stack raises."""
        length = len(data)
        self._check_writable("write", fua)
        self._check_write_range("write", offset, length)
        if length:
            self.next.pwrite(offset, data, fua)

    def flush(self) -> None:
        """Raises OSError(EINVAL) without can_flush, else what the stack raises."""
        self._require(self._caps.can_flush, "flush")
        self.next.flush()

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Raises OSError: EPERM (read-only), EINVAL (no trim, bad flag or
        range), else what the stack raises."""
        self._check_writable("trim", fua)
        self._require(self._caps.can_trim, "trim")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise self._range_error("trim", offset, length, errno.EINVAL)
        if length:
            self.next.trim(offset, length, fua)

    def zero(
        self,
        offset: int,
        length: int,
        may_trim: bool = False,
        fua: bool = False,
        fast: bool = False,
    ) -> None:
        """Raises OSError: EPERM (read-only), EINVAL (no zero, bad flag or
        negative range), ENOTSUP (fast without can_fast_zero), ENOSPC (past
        the end), else what the stack raises."""
        self._check_writable("write zeroes", fua)
        self._require(self._caps.can_zero, "write zeroes")
        if fast and not self._caps.can_fast_zero:
            raise OSError(errno.ENOTSUP, "fast write zeroes is not supported")
        self._check_write_range("write zeroes", offset, length)
        if length:
            self.next.zero(offset, length, may_trim, fua, fast)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Raises OSError(EINVAL) without can_extents, for length 0 or a bad
        range, else what the stack raises."""
        self._require(self._caps.can_extents, "block status")
        if offset < 0 or length <= 0 or offset + length > self._size:
            raise self._range_error("block status", offset, length, errno.EINVAL)
        return self.next.extents(offset, length)

    def cache(self, offset: int, length: int) -> None:
        """Raises OSError(EINVAL) without can_cache or for a bad range, else
        what the stack raises."""
        self._require(self._caps.can_cache, "cache")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise self._range_error("cache", offset, length, errno.EINVAL)
        if length:
            self.next.cache(offset, length)

    # -- checks --------------------------------------------------------------

    def _check_writable(self, what: str, fua: bool) -> None:
        if self._caps.read_only:
            raise OSError(errno.EPERM, f"{what} refused: the disk is read-only")
        if fua and not self._caps.can_fua:
            raise OSError(errno.EINVAL, f"{what} with FUA is not supported")

    def _check_write_range(self, what: str, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise self._range_error(what, offset, length, errno.EINVAL)
        if offset + length > self._size:
            raise self._range_error(what, offset, length, errno.ENOSPC)

    @staticmethod
    def _require(capable: bool, what: str) -> None:
        if not capable:
            raise OSError(errno.EINVAL, f"{what} is not supported by this disk")

    def _range_error(self, what: str, offset: int, length: int, err: int) -> OSError:
        return OSError(
            err,
            f"{what} of {length} bytes at offset {offset} is outside the {self._size}-byte disk",
        )
