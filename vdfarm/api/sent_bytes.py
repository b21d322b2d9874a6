"""Bytes of version files this server sent to its peers since it started,
per (vDisk, file): what `GET /replication/sent` shows, so a test (or an
admin) can see that only deltas move.

Rules: in memory only, per app; a block counts once the response asks for
the next one (it was handed to the connection), so an aborted download
counts what went out, not what was read. Thread-safe: downloads stream
from worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator


class SentBytes:
    """A thread-safe counter of bytes sent, keyed "VDISK/FILE"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[str, int] = {}

    def add(self, key: str, n: int) -> None:
        with self._lock:
            self._sent[key] = self._sent.get(key, 0) + n

    def snapshot(self) -> dict[str, int]:
        """Every key and its bytes so far, by key."""
        with self._lock:
            return dict(sorted(self._sent.items()))

    def counting(self, key: str, blocks: Iterator[bytes]) -> Iterator[bytes]:
        """BLOCKS, each counted under KEY once the next one is asked for."""
        try:
            for block in blocks:
                yield block
                self.add(key, len(block))
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()

    async def counting_async(self, key: str, blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`counting` for an async BLOCKS (closed when this one is)."""
        try:
            async for block in blocks:
                yield block
                self.add(key, len(block))
        finally:
            close = getattr(blocks, "aclose", None)
            if close is not None:
                await close()
