"""Reads that never wait for the disk: page-cache hits now, misses later.

A layer's `try_pread` (vdfarm.block.layer) answers from the page cache
with `preadv2(RWF_NOWAIT)` or, on a miss, hands back a `ColdRead`: the same
read, resolved to file positions already, for the caller to run in a worker
thread (so one slow disk does not stall the event loop).

Rules:
- `try_pread_fd` returns the bytes when every page is cached; on a miss
  (EAGAIN, or a short read whose rest misses) a ColdRead of the whole range.
- Where RWF_NOWAIT does not exist (not Linux, Python < 3.7) or the file
  system refuses it (EOPNOTSUPP, EINVAL), the read is done at once, blocking,
  as it was before: graceful, never wrong.
- A ColdRead does only positional reads of what it was given (fds and
  positions, zeroes, bytes): no layer state, no cache, no lock, so it is
  safe in any thread while the loop goes on using the layers. Its fds are
  the layers' own; they must stay open until it has run (a stack is closed
  only after its connections are gone).
- Imports nothing of vdfarm.block: the layers import it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

# 0 where the flag does not exist: preadv then simply blocks (the old way).
RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)

# A piece of a cold read: (fd, position, length), (None, 0, length) for
# zeroes, or (bytes, position, length) for bytes already in memory.
ColdPiece = tuple[int | bytes | None, int, int]

_NOT_SUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL)


class ColdRead:
    """A read that missed the page cache; call it (in a worker thread) for
    its `length` bytes. Raises OSError(EIO) if a file ends first, or the
    OSError of preadv."""

    __slots__ = ("length", "pieces")

    def __init__(self, pieces: Sequence[ColdPiece], length: int) -> None:
        self.pieces = pieces
        self.length = length

    def __call__(self) -> bytearray:
        out = bytearray(self.length)
        view = memoryview(out)
        at = 0
        for src, pos, n in self.pieces:
            if src.__class__ is int:
                _read_into(src, view[at : at + n], pos)
            elif src is not None:
                view[at : at + n] = src[pos : pos + n]  # type: ignore[index]
            at += n
        return out


def try_pread_fd(fd: int, offset: int, length: int) -> bytearray | ColdRead:
    """`length` bytes of `fd` at `offset` if the page cache holds them all,
    else a ColdRead of them. Raises the OSError of preadv (other than a
    miss); OSError(EIO) if the file ends first where NOWAIT is unsupported."""
    buf = bytearray(length)
    try:
        got = os.preadv(fd, [buf], offset, RWF_NOWAIT)
    except OSError as exc:
        return nowait_failed(exc, fd, offset, length)
    if got == length:
        return buf
    return _rest(fd, buf, got, offset)


def try_read_into(fd: int, view: memoryview, offset: int) -> bool:
    """Fill `view` from the page cache: True if done, False on a miss (the
    view may be partly filled). Raises the OSError of preadv other than a
    miss; blocks where NOWAIT is unsupported."""
    length = len(view)
    done = 0
    while done < length:
        try:
            got = os.preadv(fd, [view[done:]], offset + done, RWF_NOWAIT)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return False
            if exc.errno not in _NOT_SUPPORTED:
                raise
            _read_into(fd, view[done:], offset + done)
            return True
        if got == 0:  # end of file: the cold read reports it
            return False
        done += got
    return True


def nowait_failed(exc: OSError, fd: int, offset: int, length: int) -> bytearray | ColdRead:
    """What a failed NOWAIT read of [offset, offset+length) means: a miss
    → a ColdRead; NOWAIT unsupported → the blocking read now. Raises `exc`
    for any other failure, OSError(EIO) for a short file."""
    if exc.errno == errno.EAGAIN:
        return ColdRead(((fd, offset, length),), length)
    if exc.errno in _NOT_SUPPORTED:
        buf = bytearray(length)
        _read_into(fd, memoryview(buf), offset)
        return buf
    raise exc


def _rest(fd: int, buf: bytearray, got: int, offset: int) -> bytearray | ColdRead:
    """A short NOWAIT read (part cached, or the file's end): try the rest,
    else the whole range is a cold read (its cached part costs little)."""
    if got and try_read_into(fd, memoryview(buf)[got:], offset + got):
        return buf
    return ColdRead(((fd, offset, len(buf)),), len(buf))


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    """Blocking: fill `view` from `offset`. Raises OSError(EIO) if the file
    ends first, or the OSError of preadv."""
    done = 0
    length = len(view)
    while done < length:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"unexpected end of file at offset {offset + done}")
        done += got


def probably_cached(ranges: Sequence[tuple[int, int, int]]) -> bool:
    """A cheap residency test for sendfile(2) (which blocks on a cold
    file): the first and last byte of each (fd, offset, length) range read
    with RWF_NOWAIT. Not a proof (a page in the middle may be gone); readahead
    fills ranges whole, so in practice it sorts cold from warm. True where
    NOWAIT is unsupported. Raises nothing."""
    if not RWF_NOWAIT:
        return True
    probe = bytearray(1)
    preadv = os.preadv
    try:
        for fd, offset, length in ranges:
            if not preadv(fd, [probe], offset, RWF_NOWAIT):
                return False
            if length > 1 and not preadv(fd, [probe], offset + length - 1, RWF_NOWAIT):
                return False
    except OSError as exc:
        return exc.errno in _NOT_SUPPORTED
    return True
