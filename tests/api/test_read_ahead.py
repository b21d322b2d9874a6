"""A body read ahead on a thread of its own: the blocks in order, an error
after the blocks before it, the thread at the copy priority, and a body
closed early stops the thread and closes the blocks."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from vdfarm.api.read_ahead import read_ahead
from vdfarm.store.copy_priority import COPY_NICE


class Blocks:
    """N numbered blocks, remembering the thread and its nice, and if closed."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.made = 0
        self.closed = threading.Event()
        self.nice: int | None = None
        self.thread: int | None = None

    def __call__(self):
        self.thread = threading.get_native_id()
        self.nice = os.getpriority(os.PRIO_PROCESS, self.thread)
        return self._blocks()

    def _blocks(self):
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise OSError("the disk is on fire")
                self.made += 1
                yield b"%d" % i
        finally:
            self.closed.set()


async def take(body, count=None):
    got = []
    async for block in body:
        got.append(block)
        if count is not None and len(got) == count:
            break
    return got


def test_the_blocks_come_in_order_from_a_lowered_thread():
    blocks = Blocks(50)
    got = asyncio.run(take(read_ahead(blocks)))
    assert got == [b"%d" % i for i in range(50)]
    assert blocks.thread != threading.get_native_id()
    assert blocks.nice == max(COPY_NICE, os.getpriority(os.PRIO_PROCESS, 0))
    assert blocks.closed.is_set()


def test_an_error_comes_after_the_blocks_before_it():
    blocks = Blocks(10, fail_at=3)
    got = []

    async def run():
        async for block in read_ahead(blocks):
            got.append(block)

    with pytest.raises(OSError, match="on fire"):
        asyncio.run(run())
    assert got == [b"0", b"1", b"2"]


def test_a_body_closed_early_stops_the_thread_and_closes_the_blocks():
    blocks = Blocks(10_000)

    async def run():
        body = read_ahead(blocks, depth=2)
        got = await take(body, count=3)
        await body.aclose()
        return got

    assert asyncio.run(run()) == [b"0", b"1", b"2"]
    assert blocks.closed.wait(10)
    assert blocks.made <= 3 + 2 + 1  # never more than DEPTH ahead of the reader
