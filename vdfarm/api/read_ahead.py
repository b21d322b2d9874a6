"""A streamed body read ahead on a thread of its own, at a copy's priority.

A replica download reads (and may pack) gigabytes. Reading a block at a
time in the API's worker pool, one hop per block, would leave the disk
idle while a block is sent and the network idle while the next is read,
and every hop wakes the event loop that also serves the devices. So:

Rules:
- `read_ahead(make_blocks)` runs MAKE_BLOCKS() and its iteration on one
  thread made for this body, lowered to the copy priority
  (`copy_priority`), which keeps up to DEPTH blocks ready; the event loop
  only takes them as the connection wants them (one wake-up per block).
- Closing the async iterator (the body sent, the client gone, the task
  cancelled) stops the thread at its next block and closes MAKE_BLOCKS'
  iterator there; an exception of the blocks is raised to the body's
  reader, after the blocks before it.
- Memory held: DEPTH blocks and the one being sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from vdfarm.store.copy_priority import lower_this_thread

DEPTH = 2
_WAIT_S = 0.5


class _End:
    """The blocks ended (ERROR: how, or None)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def read_ahead(
    make_blocks: Callable[[], Iterator[bytes]], depth: int = DEPTH
) -> AsyncIterator[bytes]:
    """The blocks of MAKE_BLOCKS(), made on a lowered thread up to DEPTH ahead.
    Raises what the blocks raise."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[bytes | _End] = asyncio.Queue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def hand_over(item: bytes | _End) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            loop.call_soon_threadsafe(ready.put_nowait, item)

    def produce() -> None:
        lower_this_thread()
        error: BaseException | None = None
        try:
            blocks = make_blocks()
            try:
                for block in blocks:
                    while not room.acquire(timeout=_WAIT_S):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    hand_over(block)
            finally:
                close = getattr(blocks, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the reader, raised there
            error = exc
        hand_over(_End(error))

    thread = threading.Thread(target=produce, name="replica-send", daemon=True)
    thread.start()
    try:
        while True:
            item = await ready.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
            room.release()
    finally:
        stop.set()
        room.release()
