"""Reads and writes that leave the page cache as they found it.

A replica copy reads a whole version file on the sender and writes a whole
one on the receiver; through the page cache that would push out the blocks
the devices read every second. So:
- `read_block` first takes what the cache already holds (`preadv2` with
  RWF_NOWAIT: those pages were hot before us and stay); the rest is read
  from the disk and dropped again (`posix_fadvise(DONTNEED)`) at once.
- `drop` forgets a range after it was written and synced (DONTNEED drops
  clean pages only, so a writer syncs first).
- Advice is advice: a file system that refuses it changes nothing here.
- Pure positional I/O on a given fd: no paths, no state.
"""

from __future__ import annotations

import errno
import os

RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_NOWAIT_REFUSED = (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL)


def drop(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to forget LENGTH bytes of FD's cached pages at OFFSET.
    Raises nothing."""
    if length <= 0:
        return
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def _cached_prefix(fd: int, view: memoryview, offset: int) -> int:
    """How many bytes at OFFSET the page cache gave without waiting (0 where
    RWF_NOWAIT does not exist or the file system refuses it)."""
    if not RWF_NOWAIT:
        return 0
    try:
        return os.preadv(fd, [view], offset, RWF_NOWAIT)
    except OSError as exc:
        if exc.errno in _NOWAIT_REFUSED:
            return 0
        raise


def read_block(fd: int, offset: int, length: int) -> bytes:
    """Up to LENGTH bytes of FD at OFFSET (fewer only at the end of the file).
    The pages this read had to bring in from the disk are dropped again.

    Raises OSError.
    """
    buf = bytearray(length)
    view = memoryview(buf)
    cached = _cached_prefix(fd, view, offset)
    done = cached
    while done < length:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    drop(fd, offset + cached, done - cached)
    view.release()
    if done < length:
        del buf[done:]
    return bytes(buf)
