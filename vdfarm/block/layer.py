"""The one interface every block layer implements, and the pass-through base.

Rules (the nbdkit filter pattern):
- A layer wraps the next one (`self.next`); a method a layer does not define
  passes through to the layer below.
- Ranges and flags are checked once, at the top of the stack
  (`vdfarm.block.stack.CheckedStack`); layers do not re-validate.
- Failures are `OSError` with an errno (EIO, ENOSPC, EPERM, ...); the stream
  service maps them to NBD errors with `vdfarm.nbd.errors.errno_to_nbd`.
- Calls are synchronous. Reads of page-cached files are fast enough to run on
  the event loop; slow calls (flush/fsync) may be moved to a thread by the
  caller. `try_pread` is the event loop's read: it answers from the page
  cache or hands back a ColdRead (vdfarm.block.nowait) to run in a thread;
  what it resolves (metadata, maps, caches) it resolves on the caller's
  thread, so no layer state is touched from the worker.
- State lives in the layer instance: a fresh stack per device, shared
  read-only layers underneath.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from vdfarm.block.nowait import ColdRead

# Extent flags, equal to NBD's base:allocation bits on purpose.
EXTENT_HOLE = 1
EXTENT_ZERO = 2

# What pwrite accepts: any bytes-like object of bytes.
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of `length` bytes that share allocation `flags` (EXTENT_*)."""

    length: int
    flags: int


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a stack can do; the stream service advertises exactly this."""

    read_only: bool = False
    can_flush: bool = False
    can_fua: bool = False
    can_trim: bool = False
    can_zero: bool = False
    can_fast_zero: bool = False
    can_cache: bool = False
    can_extents: bool = False
    can_multi_conn: bool = False


def file_capabilities(read_only: bool, fast_zero: bool) -> Capabilities:
    """What a file layer (raw, qcow2) opened read-only or not can do:
    flush, cache, extents and multi-conn always; writes only when writable;
    fast zero when writable and `fast_zero`."""
    return Capabilities(
        read_only=read_only,
        can_flush=True,
        can_fua=not read_only,
        can_trim=not read_only,
        can_zero=not read_only,
        can_fast_zero=not read_only and fast_zero,
        can_cache=True,
        can_extents=True,
        can_multi_conn=True,
    )


# What a writable layer that implements every call can do.
FULL_CAPABILITIES = Capabilities(
    read_only=False,
    can_flush=True,
    can_fua=True,
    can_trim=True,
    can_zero=True,
    can_fast_zero=True,
    can_cache=True,
    can_extents=True,
    can_multi_conn=True,
)


class Layer:
    """Base of all layers. With `next` set, every call passes through."""

    # The layer below. A bottom layer (a file, memory) has none: it is
    # built with next=None, leaves this unset and overrides every call
    # that would pass through.
    next: Layer

    def __init__(self, next: Layer | None = None) -> None:
        if next is not None:
            self.next = next

    @property
    def size(self) -> int:
        return self.next.size

    def capabilities(self) -> Capabilities:
        return self.next.capabilities()

    def pread(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """Return exactly `length` bytes at `offset`.

        The result belongs to the caller: no layer keeps or reuses it
        (immutable bytes, or a fresh bytearray)."""
        return self.next.pread(offset, length)

    def try_pread(self, offset: int, length: int) -> bytes | bytearray | memoryview | ColdRead:
        """pread without waiting for the disk: the bytes (as pread) when
        they are in memory or the page cache, else a ColdRead the caller runs
        in a worker thread for them. A layer that changes what a read returns
        must override this (the default passes through; a bottom layer
        overrides it). Raises what pread raises (a ColdRead raises those of
        its file reads when run)."""
        return self.next.try_pread(offset, length)

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Write the bytes-like `data` (of bytes) at `offset`. No layer keeps
        a reference to `data` after returning, so the caller may reuse its
        buffer. With `fua`, the data is as durable as after a flush when
        this returns."""
        self.next.pwrite(offset, data, fua)

    def flush(self) -> None:
        self.next.flush()

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self.next.trim(offset, length, fua)

    def zero(
        self,
        offset: int,
        length: int,
        may_trim: bool = False,
        fua: bool = False,
        fast: bool = False,
    ) -> None:
        """Write zeroes. With `fast`, raise OSError(ENOTSUP) unless the
        zeroing is cheaper than writing zeroes (NBD_CMD_FLAG_FAST_ZERO)."""
        self.next.zero(offset, length, may_trim, fua, fast)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Allocation of [offset, offset+length): at least one extent,
        contiguous from `offset`, may end early but never past the range."""
        return self.next.extents(offset, length)

    def cache(self, offset: int, length: int) -> None:
        self.next.cache(offset, length)

    def file_ranges(self, offset: int, length: int) -> list[tuple[int, int, int]] | None:
        """Where the bytes of [offset, offset+length) lie in open files, as
        (fd, file offset, length) pieces in order, so a transport can send
        them with sendfile(2) instead of reading them into memory. None when
        some of the range is not a plain file range (zeroes, compressed or
        computed data): the caller then uses pread. A layer that changes
        what a read returns must override this (the default passes through;
        a bottom layer overrides it)."""
        return self.next.file_ranges(offset, length)

    def close(self) -> None:
        """Release this layer's own resources only. A layer below may be
        shared; whoever opened it closes it."""


def add_extent(out: list[Extent], length: int, flags: int) -> None:
    """Append an extent, merged into the last one when the flags are equal."""
    if out and out[-1].flags == flags:
        out[-1] = Extent(out[-1].length + length, flags)
    else:
        out.append(Extent(length, flags))


def add_extents_below(out: list[Extent], below: Layer, start: int, stop: int) -> None:
    """Append the extents of `below` for exactly [start, stop) to `out`
    (merged with add_extent), asking again where its answer ends early and
    clipping an answer that runs past `stop`.

    Raises what `below.extents` raises; OSError(EIO) if it answers with no
    extent."""
    pos = start
    while pos < stop:
        before = pos
        for extent in below.extents(pos, stop - pos):
            take = min(extent.length, stop - pos)
            if take <= 0:
                break
            add_extent(out, take, extent.flags)
            pos += take
        if pos == before:
            raise OSError(errno.EIO, f"no extents from the layer below at {pos}")
