"""Check and write received chunks on a thread of their own while the next
chunk arrives: the network and the hashing overlap.

Rules:
- Two chunk buffers: the caller fills `buffer`, `submit`s it, and fills the
  other while a single writer thread checks and writes the first
  (`Partial.write_chunk`: two sha256s and a pwrite, all outside the GIL).
- Writes happen one at a time, in the order submitted: the Partial's
  verified prefix grows exactly as without the thread.
- A write's failure (BadChunk, StoreFull, StoreError) is raised to the
  caller at its next `submit` or `settle`, never lost; `written(index)` is
  called, on the caller's thread, once chunk INDEX is on disk.
- Leaving the `with` block waits for the write in flight (whatever the
  block raised), so the Partial is never used by two threads at once.
- The writer thread runs at the copy's lower CPU priority (`copy_priority`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from vdfarm.store.copy_priority import lower_this_thread
from vdfarm.store.receive import Partial


class ChunkPipe:
    """Hands filled chunk buffers to a writer thread for PARTIAL."""

    def __init__(self, partial: Partial, chunk_size: int, written: Callable[[int], None]) -> None:
        self._partial = partial
        self._buffers = [memoryview(bytearray(chunk_size)) for _ in range(2)]
        self._free = 0
        self._inflight: tuple[int, Future[None]] | None = None
        self._written = written
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="replica-write", initializer=lower_this_thread
        )

    @property
    def buffer(self) -> memoryview:
        """The buffer to fill next (chunk_size bytes)."""
        return self._buffers[self._free]

    def submit(self, index: int, length: int) -> None:
        """Write the first LENGTH bytes of `buffer` as chunk INDEX (once the
        write before it is done). Raises what that earlier write raised."""
        self.settle()
        data = self._buffers[self._free][:length]
        future = self._executor.submit(self._partial.write_chunk, index, data)
        self._inflight = (index, future)
        self._free ^= 1

    def settle(self) -> None:
        """Wait for the write in flight. Raises what it raised (BadChunk,
        StoreFull, StoreError)."""
        if self._inflight is None:
            return
        index, future = self._inflight
        self._inflight = None
        future.result()
        self._written(index)

    def __enter__(self) -> ChunkPipe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._inflight is not None:
            self._inflight[1].exception()  # wait; the block's own error goes on
            self._inflight = None
        self._executor.shutdown(wait=True)
