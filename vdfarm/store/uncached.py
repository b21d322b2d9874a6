"""Reads and writes that leave the page cache as they found it.

A replica copy reads a whole version file on the sender and writes a whole
one on the receiver; through the page cache that would push out the blocks
the devices read every second. So:
- `read_block` first asks what the cache already holds (`preadv2` with
  RWF_NOWAIT into a scratch buffer: those pages were hot before us and
  stay); the block is then read whole into a new bytes object (one copy,
  no buffer to fill and copy again), and what had to come from the disk
  is dropped again (`posix_fadvise(DONTNEED)`) at once.
- A reader that goes through a file from end to end says so first
  (`no_readahead`): the kernel's readahead would bring the next pages in
  before our RWF_NOWAIT look, and they would pass for hot and stay cached.
  Such a reader does its own readahead: it looks at the next block's
  cache (`cached_prefix`) and only then asks the disk for it (`prefetch`,
  WILLNEED), and reads it later with that look (`read_block(cached=...)`).
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


def no_readahead(fd: int) -> None:
    """Tell the kernel not to read ahead of this fd's reads (POSIX_FADV_RANDOM
    on its open file: other openers keep theirs). Raises nothing."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    except OSError:
        pass


def prefetch(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start reading LENGTH bytes of FD at OFFSET into the
    cache (POSIX_FADV_WILLNEED), without waiting. Raises nothing."""
    if length <= 0:
        return
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass


def cached_prefix(fd: int, scratch: bytearray, offset: int, length: int) -> int:
    """How many bytes at OFFSET (at most LENGTH) the page cache gave without
    waiting (0 where RWF_NOWAIT does not exist or the file system refuses it),
    read into SCRATCH (grown to LENGTH if shorter). Raises OSError."""
    if not RWF_NOWAIT:
        return 0
    if len(scratch) < length:
        scratch.extend(bytes(length - len(scratch)))
    with memoryview(scratch) as view:
        try:
            return os.preadv(fd, [view[:length]], offset, RWF_NOWAIT)
        except OSError as exc:
            if exc.errno in _NOWAIT_REFUSED:
                return 0
            raise


def read_block(
    fd: int, offset: int, length: int, scratch: bytearray | None = None, cached: int | None = None
) -> bytes:
    """Up to LENGTH bytes of FD at OFFSET (fewer only at the end of the file).
    The pages this read had to bring in from the disk are dropped again:
    all but the first CACHED bytes (the cache's prefix looked at before the
    disk was asked, `cached_prefix`; looked at here if None). SCRATCH is
    where the cache is looked at: a reader of many blocks passes one and
    saves its allocation.

    Raises OSError.
    """
    if cached is None:
        cached = cached_prefix(fd, bytearray() if scratch is None else scratch, offset, length)
    data = os.pread(fd, length, offset)
    while 0 < len(data) < length:  # a short read before the end: rare, so a copy is fine
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    if len(data) > cached:
        drop(fd, offset + cached, len(data) - cached)
    return data
