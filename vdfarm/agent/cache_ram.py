"""RamTier: the RAM tier of the device's write cache, blocks kept in recency order. No I/O.

Rules:
- A tier holds whole blocks by block number, each as one immutable bytes
  object (the disk's last block may be shorter than the others); it holds at
  most `capacity` blocks and never decides what to keep: the cache checks
  room before it puts, and asks for the least recently used block when it
  wants to spill one.
- Recency is the order of an OrderedDict: `put` and `touch` move a block to
  the most recent end, `pop_lru` takes from the other end. Every operation is
  O(1); none scans.
"""

from __future__ import annotations

from collections import OrderedDict


class RamTier:
    """At most `capacity` blocks in RAM, least recently used first."""

    def __init__(self, capacity: int) -> None:
        """Raises ValueError if capacity < 0."""
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self.capacity = capacity
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    @property
    def used(self) -> int:
        """How many blocks the tier holds."""
        return len(self._blocks)

    @property
    def free(self) -> int:
        """How many more blocks fit."""
        return self.capacity - len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def get(self, block: int) -> bytes:
        """The block's bytes, its recency unchanged. Raises KeyError if absent."""
        return self._blocks[block]

    def touch(self, block: int) -> None:
        """Make the block the most recently used. Raises KeyError if absent."""
        self._blocks.move_to_end(block)

    def put(self, block: int, data: bytes) -> None:
        """Store or replace the block as the most recently used.

        Raises ValueError if it is new and the tier is full (a programming
        error: the cache checks room first)."""
        if block in self._blocks:
            self._blocks.move_to_end(block)
        elif len(self._blocks) >= self.capacity:
            raise ValueError(f"RAM tier full ({self.capacity} blocks): no room for block {block}")
        self._blocks[block] = data

    def remove(self, block: int) -> None:
        """Forget the block. Raises KeyError if absent."""
        del self._blocks[block]

    def pop_lru(self) -> tuple[int, bytes]:
        """Take out the least recently used block. Raises KeyError if empty."""
        return self._blocks.popitem(last=False)

    def clear(self) -> None:
        """Forget every block."""
        self._blocks.clear()
