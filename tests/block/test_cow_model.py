"""WriteCacheOverlay against a plain bytearray model, by random operations.

Invariant, in plain words: after any sequence of writes, zeroes, trims,
flushes and resets at any offsets and lengths, every read through the
overlay returns what the bytearray says, the layer below is unchanged, and
the extents cover the range and are zero wherever they claim so.
"""

import itertools
import os
import random
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from vdfarm.block.cow import WriteCacheOverlay
from vdfarm.block.layer import EXTENT_ZERO
from vdfarm.block.memory import MemoryDisk
from vdfarm.block.raw import RawFile

from .model_ranges import ranges_near_edges


class OverlayMachine(RuleBasedStateMachine):
    disk_size = 64 * 1024
    block_size = 4096
    lower_kind = "memory"

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="vdfarm-cow-")
        self.base = random.Random(self.disk_size).randbytes(self.disk_size)
        if self.lower_kind == "memory":
            self.lower = MemoryDisk(self.disk_size, initial=self.base)
        else:
            path = os.path.join(self.dir, "base.raw")
            with open(path, "wb") as f:
                f.write(self.base)
            self.lower = RawFile(path, read_only=True)
        self.overlay = WriteCacheOverlay(
            self.lower, os.path.join(self.dir, "cache"), block_size=self.block_size
        )
        self.model = bytearray(self.base)

    def teardown(self):
        self.overlay.close()
        self.lower.close()
        shutil.rmtree(self.dir)

    @initialize()
    def nothing_yet(self):
        assert self.overlay.pread(0, self.disk_size) == self.base

    def ranges(self):
        """(offset, length) inside the disk, often on or next to block edges."""
        return ranges_near_edges(self.disk_size, self.block_size, 2)

    @rule(data=st.data(), fill=st.integers(1, 255))
    def write(self, data, fill):
        offset, length = data.draw(self.ranges())
        payload = bytes([fill]) * length
        self.overlay.pwrite(offset, payload, fua=data.draw(st.booleans()))
        self.model[offset : offset + length] = payload

    @rule(data=st.data())
    def zero(self, data):
        offset, length = data.draw(self.ranges())
        self.overlay.zero(
            offset, length, may_trim=data.draw(st.booleans()), fast=data.draw(st.booleans())
        )
        self.model[offset : offset + length] = bytes(length)

    @rule(data=st.data())
    def trim(self, data):
        offset, length = data.draw(self.ranges())
        self.overlay.trim(offset, length)
        self.model[offset : offset + length] = bytes(length)

    @rule()
    def flush(self):
        self.overlay.flush()

    @rule()
    def reset(self):
        self.overlay.reset()
        self.model[:] = self.base

    @rule(data=st.data())
    def read_range(self, data):
        offset, length = data.draw(self.ranges())
        assert self.overlay.pread(offset, length) == self.model[offset : offset + length]

    @rule(data=st.data())
    def extents_are_true(self, data):
        offset, length = data.draw(self.ranges())
        extents = self.overlay.extents(offset, length)
        assert extents and all(e.length > 0 for e in extents)
        assert sum(e.length for e in extents) == length
        assert all(a.flags != b.flags for a, b in itertools.pairwise(extents))
        pos = offset
        for extent in extents:
            if extent.flags & EXTENT_ZERO:
                assert self.model[pos : pos + extent.length] == bytes(extent.length)
            pos += extent.length

    @invariant()
    def whole_disk_matches(self):
        assert self.overlay.pread(0, self.disk_size) == self.model
        assert self.overlay.used_bytes % self.block_size == 0

    @invariant()
    def lower_is_untouched(self):
        assert self.lower.pread(0, self.disk_size) == self.base


SETTINGS = settings(max_examples=30, stateful_step_count=25, deadline=None)


class MemoryLower4K(OverlayMachine):
    pass


class RawLower512(OverlayMachine):
    block_size = 512
    lower_kind = "raw"


class RawLowerShortLastBlock(OverlayMachine):
    disk_size = 64 * 1024 + 1000
    lower_kind = "raw"


class MemoryLowerShortLastBlock512(OverlayMachine):
    disk_size = 16 * 1024 + 77
    block_size = 512


TestMemoryLower4K = MemoryLower4K.TestCase
TestMemoryLower4K.settings = SETTINGS
TestRawLower512 = RawLower512.TestCase
TestRawLower512.settings = SETTINGS
TestRawLowerShortLastBlock = RawLowerShortLastBlock.TestCase
TestRawLowerShortLastBlock.settings = SETTINGS
TestMemoryLowerShortLastBlock512 = MemoryLowerShortLastBlock512.TestCase
TestMemoryLowerShortLastBlock512.settings = SETTINGS
