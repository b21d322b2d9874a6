"""DiskTier: the disk tier of the device's write cache, blocks in slots of a sparse local file.

Rules:
- The file is the agent's own scratch space and volatile by design: created
  fresh at start (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600), removed at close,
  never read back after a restart. A leftover from an earlier run is
  removed first only if it is a regular file owned by us; anything else at
  the path (a symlink, a device, someone else's file) is refused.
- Blocks live in slots of BLOCK bytes, not at their disk offset, so the
  file never grows past `capacity` slots whatever the disk's size. A freed
  slot is reused before the file grows; slots are never compacted. The file
  is sparse: a slot costs space on the local file system only once written.
- A block's bytes go in with one pwrite and come out with one pread; a short
  pwrite or pread raises OSError (the local file system is full or broken).
- Holds at most `capacity` blocks and never decides what to keep: the cache
  checks room before it puts.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("vdfarm.agent")

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_cache_file(path: Path) -> int:
    """Create PATH fresh (mode 0600) and return its descriptor.

    A leftover regular file owned by us is removed first (a boot starts
    empty). Raises FileExistsError if something else is at PATH (a symlink,
    a directory, a file of another user), OSError if it cannot be created.
    """
    try:
        return os.open(path, _OPEN_FLAGS, 0o600)
    except FileExistsError:
        _remove_leftover(path)
    return os.open(path, _OPEN_FLAGS, 0o600)


def _remove_leftover(path: Path) -> None:
    found = os.lstat(path)
    if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
        raise FileExistsError(
            errno.EEXIST,
            "refusing to replace something that is not a regular file of ours "
            "with the write cache file",
            str(path),
        )
    log.warning("removing the leftover write cache file %s of an earlier run", path)
    os.unlink(path)


class DiskTier:
    """At most `capacity` blocks in slots of the file PATH, created fresh here."""

    def __init__(self, path: Path, capacity: int, block_size: int) -> None:
        """Raises ValueError if capacity < 0, OSError (FileExistsError) as
        create_cache_file does."""
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self.path = path
        self.capacity = capacity
        self._block_size = block_size
        self._slots: dict[int, tuple[int, int]] = {}  # block -> (slot, length)
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._fd = create_cache_file(path)

    @property
    def used(self) -> int:
        """How many blocks the tier holds."""
        return len(self._slots)

    @property
    def free(self) -> int:
        """How many more blocks fit."""
        return self.capacity - len(self._slots)

    def __contains__(self, block: int) -> bool:
        return block in self._slots

    def get(self, block: int) -> bytes:
        """The block's bytes. Raises KeyError if absent, OSError if the read fails."""
        slot, length = self._slots[block]
        data = os.pread(self._fd, length, slot * self._block_size)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read of slot {slot} in {self.path}")
        return data

    def put(self, block: int, data: bytes) -> None:
        """Store or replace the block.

        Raises ValueError if it is new and the tier is full (a programming
        error: the cache checks room first), OSError if the write fails."""
        if block in self._slots:
            slot = self._slots[block][0]
        elif len(self._slots) >= self.capacity:
            raise ValueError(f"disk tier full ({self.capacity} blocks): no room for block {block}")
        elif self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = self._next_slot
            self._next_slot += 1
        try:
            written = os.pwrite(self._fd, data, slot * self._block_size)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write to slot {slot} in {self.path}")
        except OSError:
            if block not in self._slots:
                self._free_slots.append(slot)
            raise
        self._slots[block] = (slot, len(data))

    def remove(self, block: int) -> None:
        """Forget the block; its slot is reused. Raises KeyError if absent."""
        slot, _ = self._slots.pop(block)
        self._free_slots.append(slot)

    def close(self) -> None:
        """Close and remove the file (if PATH is still our file); twice is harmless."""
        if self._fd < 0:
            return
        try:
            ours = os.fstat(self._fd)
            try:
                there = os.lstat(self.path)
            except FileNotFoundError:
                return
            if (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino):
                os.unlink(self.path)
        finally:
            os.close(self._fd)
            self._fd = -1
            self._slots.clear()
            self._free_slots.clear()
            self._next_slot = 0
