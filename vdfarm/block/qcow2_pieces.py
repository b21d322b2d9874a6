"""Pieces of a resolved qcow2 read, and small helpers to build and use them.

A piece is (src, pos, length): `length` bytes that read as
- src an int: the open file `src` from offset `pos`;
- src None: zeroes (pos is 0);
- src bytes: `src[pos : pos + length]` (a decompressed cluster);
- src a Layer: `src.pread(pos, length)` (a backing layer that has no file
  range there).

Rules: pure helpers, no state; `read_pieces` and `pwritev_all` are the only
ones doing I/O, with the exact-I/O rules of vdfarm.block.raw (short reads
are EIO, short writes are retried).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeAlias, TypeGuard

from vdfarm.block.layer import Buffer, Layer
from vdfarm.block.raw import pread_exact, pread_into

# Where a piece's bytes come from (see above).
Source: TypeAlias = int | bytes | Layer | None
Piece: TypeAlias = tuple[Source, int, int]


def add_piece(pieces: list[Piece], src: Source, pos: int, length: int) -> None:
    """Append (src, pos, length), merged into the last piece if it goes on
    from it (same source, next position; zeroes always merge)."""
    if pieces:
        last_src, last_pos, last_len = pieces[-1]
        if (last_src is src or (src.__class__ is int and last_src == src)) and (
            src is None or last_pos + last_len == pos
        ):
            pieces[-1] = (last_src, last_pos, last_len + length)
            return
    pieces.append((src, pos, length))


def clip_pieces(pieces: list[Piece], skip: int, length: int) -> list[Piece]:
    """The part of `pieces` from byte `skip`, `length` bytes long."""
    out: list[Piece] = []
    for src, pos, n in pieces:
        if skip >= n:
            skip -= n
            continue
        take = min(n - skip, length)
        out.append((src, pos + skip if src is not None else 0, take))
        length -= take
        skip = 0
        if not length:
            break
    return out


def all_in_files(pieces: list[Piece]) -> TypeGuard[list[tuple[int, int, int]]]:
    """True when every piece is a file range (its src an fd)."""
    for src, _, _ in pieces:  # noqa: SIM110 (a loop, not all(): no generator per read)
        if src.__class__ is not int:
            return False
    return True


def read_pieces(pieces: list[Piece], length: int) -> bytes | bytearray | memoryview:
    """Read what `pieces` describe (`length` bytes in all).

    Raises OSError(EIO) for a short file, or what a layer raises."""
    if len(pieces) == 1:
        src, pos, n = pieces[0]
        if src.__class__ is int:
            return pread_exact(src, pos, n)
        if src is None:
            return bytes(n)
        if src.__class__ is bytes:
            return src[pos : pos + n]
        assert isinstance(src, Layer)  # the one kind of source left
        return src.pread(pos, n)
    out = bytearray(length)
    view = memoryview(out)
    preadv = os.preadv
    at = 0
    for src, pos, n in pieces:
        if src.__class__ is int:
            got = preadv(src, [view[at : at + n]], pos)
            if got != n:
                pread_into(src, view[at + got : at + n], pos + got)
        elif src.__class__ is bytes:
            view[at : at + n] = src[pos : pos + n]
        elif src is not None:
            assert isinstance(src, Layer)  # the one kind of source left
            view[at : at + n] = src.pread(pos, n)
        at += n
    return out


def pwritev_all(fd: int, buffers: Sequence[Buffer], offset: int) -> None:
    """Write all `buffers` back to back at `offset`, looping on short writes.

    Raises the OSError of pwritev/pwrite."""
    total = sum(len(b) for b in buffers)
    done = os.pwritev(fd, buffers, offset)
    if done == total:
        return
    joined = memoryview(b"".join(buffers))
    while done < total:
        done += os.pwrite(fd, joined[done:], offset + done)
