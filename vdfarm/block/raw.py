"""RawFile: the bottom layer, a raw image file (or block device) on one fd.

Rules:
- One file descriptor, opened O_RDONLY or O_RDWR with O_CLOEXEC; every call
  is a positional syscall (pread/pwrite/fallocate/lseek), so the layer keeps
  no file position and one instance may be shared by many stacks.
- The size is read once at open: images do not grow under a running server.
- trim is advisory: a file system that cannot punch holes makes it a no-op.
- zero uses the cheapest method the file system offers (punch hole when
  trimming is allowed, else zero range) and falls back to writing zeroes;
  with `fast` and no cheap method it raises OSError(ENOTSUP).
- Extents come from lseek SEEK_DATA/SEEK_HOLE; a block device reports data.
- Ranges are not checked here (CheckedStack does that once).

The module also holds the small exact-I/O helpers other layers reuse.
"""

from __future__ import annotations

import errno
import os
import stat

from vdfarm.block import fallocate as fa
from vdfarm.block.layer import (
    EXTENT_HOLE,
    EXTENT_ZERO,
    Buffer,
    Capabilities,
    Extent,
    Layer,
    file_capabilities,
)
from vdfarm.block.nowait import RWF_NOWAIT, ColdRead, nowait_failed, try_pread_fd

_ZERO_CHUNK = bytes(1 << 20)


def pread_exact(fd: int, offset: int, length: int) -> bytes:
    """Read exactly `length` bytes at `offset`, looping on short reads.

    Raises OSError(EIO) if the file ends first, or the OSError of pread.
    """
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    done = len(data)
    while done < length:
        more = os.pread(fd, length - done, offset + done)
        if not more:
            raise OSError(errno.EIO, f"unexpected end of file at offset {offset + done}")
        parts.append(more)
        done += len(more)
    return b"".join(parts)


def pread_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill the writable byte `view` from `offset`, looping on short reads.

    Raises OSError(EIO) if the file ends first, or the OSError of preadv.
    """
    done = os.preadv(fd, [view], offset)
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"unexpected end of file at offset {offset + done}")
        done += got


def pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    """Write all of the bytes-like `data` at `offset`, looping on short writes.

    Raises the OSError of pwrite.
    """
    done = os.pwrite(fd, data, offset)
    total = len(data)
    if done == total:
        return
    view = memoryview(data)
    while done < total:
        done += os.pwrite(fd, view[done:], offset + done)


def _size_of(fd: int) -> tuple[int, bool]:
    """Return (size in bytes, is a block device) of the open `fd`."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END), True
    return st.st_size, False


class RawFile(Layer):
    """A raw disk image file (or block device) as a layer."""

    def __init__(self, path: str | os.PathLike[str], read_only: bool) -> None:
        """Open `path`. Raises the OSError of open/fstat."""
        super().__init__(None)
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        self._fd = os.open(path, flags)
        try:
            self._size, self._is_block_device = _size_of(self._fd)
        except OSError:
            os.close(self._fd)
            raise
        self.path = os.fspath(path)
        self.read_only = read_only
        self._can_punch = True
        self._can_zero_range = True
        self._caps = file_capabilities(read_only, fast_zero=True)

    @property
    def size(self) -> int:
        return self._size

    def capabilities(self) -> Capabilities:
        return self._caps

    def pread(self, offset: int, length: int) -> bytes:
        """Raises OSError(EIO) on a short file, or the OSError of pread."""
        data = os.pread(self._fd, length, offset)
        if len(data) == length:
            return data
        return pread_exact(self._fd, offset, length)

    def try_pread(self, offset: int, length: int) -> bytearray | ColdRead:
        """From the page cache (RWF_NOWAIT), else a ColdRead. Raises the
        OSError of preadv; OSError(EIO) on a short file (the ColdRead too)."""
        buf = bytearray(length)
        try:
            got = os.preadv(self._fd, [buf], offset, RWF_NOWAIT)
        except OSError as exc:
            return nowait_failed(exc, self._fd, offset, length)
        if got == length:
            return buf
        return try_pread_fd(self._fd, offset, length)

    def file_ranges(self, offset: int, length: int) -> list[tuple[int, int, int]] | None:
        """The file itself; None past its end (pread pads that with zeroes)."""
        if offset + length > self._size:
            return None
        return [(self._fd, offset, length)]

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Raises the OSError of pwrite/fdatasync (EBADF when read-only)."""
        pwrite_all(self._fd, data, offset)
        if fua:
            os.fdatasync(self._fd)

    def flush(self) -> None:
        """Raises the OSError of fdatasync."""
        os.fdatasync(self._fd)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Punch a hole; a no-op where holes are not supported.

        Raises OSError for real failures (EIO, EBADF...).
        """
        if self._try_punch(offset, length) and fua:
            os.fdatasync(self._fd)

    def zero(
        self,
        offset: int,
        length: int,
        may_trim: bool = False,
        fua: bool = False,
        fast: bool = False,
    ) -> None:
        """Raises OSError(ENOTSUP) with `fast` and no cheap method, or the
        OSError of the syscalls."""
        if not (
            (may_trim and self._try_punch(offset, length)) or self._try_zero_range(offset, length)
        ):
            if fast:
                raise OSError(errno.ENOTSUP, "no fast way to write zeroes on this file")
            self._write_zeroes(offset, length)
        if fua:
            os.fdatasync(self._fd)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Holes report EXTENT_HOLE|EXTENT_ZERO, data 0 (allocated).

        Raises the OSError of lseek, except ENXIO (no data after offset).
        """
        stop = offset + length
        if self._is_block_device:
            return [Extent(length, 0)]
        out: list[Extent] = []
        pos = offset
        while pos < stop:
            data_at = self._seek(pos, os.SEEK_DATA, stop)
            if data_at > pos:
                hole_end = min(data_at, stop)
                out.append(Extent(hole_end - pos, EXTENT_HOLE | EXTENT_ZERO))
                pos = hole_end
                continue
            data_end = min(self._seek(pos, os.SEEK_HOLE, stop), stop)
            out.append(Extent(data_end - pos, 0))
            pos = data_end
        return out

    def cache(self, offset: int, length: int) -> None:
        """Ask the kernel to read the range ahead. Raises OSError."""
        os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        """Close the fd (twice is harmless)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    # -- helpers -----------------------------------------------------------

    def _seek(self, pos: int, whence: int, stop: int) -> int:
        """lseek for SEEK_DATA/SEEK_HOLE; "no more data" answers `stop`."""
        try:
            return os.lseek(self._fd, pos, whence)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return stop
            raise

    def _try_punch(self, offset: int, length: int) -> bool:
        """Punch a hole; False (and remembered) if the fs cannot."""
        if self._can_punch:
            self._can_punch = fa.call_if_supported(fa.punch_hole, self._fd, offset, length)
        return self._can_punch

    def _try_zero_range(self, offset: int, length: int) -> bool:
        """FALLOC_FL_ZERO_RANGE; False (and remembered) if the fs cannot."""
        if self._can_zero_range:
            self._can_zero_range = fa.call_if_supported(fa.zero_range, self._fd, offset, length)
        return self._can_zero_range

    def _write_zeroes(self, offset: int, length: int) -> None:
        """The slow way: write zero bytes in 1 MiB chunks."""
        stop = offset + length
        while offset < stop:
            chunk = min(len(_ZERO_CHUNK), stop - offset)
            pwrite_all(self._fd, memoryview(_ZERO_CHUNK)[:chunk], offset)
            offset += chunk
