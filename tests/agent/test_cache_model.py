"""DeviceCache against a plain bytearray model, by random operations, for each kind.

Invariant, in plain words: after any sequence of writes, zeroes and trims at
any offsets and lengths, every read plan — its cached pieces as given, its
upstream pieces filled from a fake upstream disk — equals the bytearray; a
change is refused with ENOSPC exactly when the blocks it leaves holding
non-zero bytes would outnumber the capacity, and then nothing of it is
stored; the tiers never hold more than their capacity.
"""

import errno
import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.block.model_ranges import ranges_near_edges
from vdfarm.agent.cache import BLOCK, make_cache

from .plan_check import assemble


class CacheMachine(RuleBasedStateMachine):
    kind = "device-ram"
    disk_size = 10 * BLOCK + 1000  # a short last block
    ram_blocks = 4
    disk_blocks = 0

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="vdfarm-agent-cache-")
        rng = random.Random(self.disk_size)
        upstream = bytearray(rng.randbytes(self.disk_size))
        upstream[2 * BLOCK : 3 * BLOCK] = bytes(BLOCK)  # a zero block upstream
        self.upstream = bytes(upstream)
        self.cache = make_cache(
            self.kind,
            self.disk_size,
            self.ram_blocks * BLOCK,
            Path(self.dir) / "cache",
            self.disk_blocks * BLOCK,
        )
        self.capacity = {
            "device-ram": self.ram_blocks,
            "device-disk": self.disk_blocks,
            "device-ram-overflow": self.ram_blocks + self.disk_blocks,
        }[self.kind]
        self.model = bytearray(self.upstream)
        self.written: set[int] = set()  # blocks any accepted change touched

    def teardown(self):
        self.cache.close()
        shutil.rmtree(self.dir)

    def ranges(self):
        return ranges_near_edges(self.disk_size, BLOCK, 3)

    def blocks_of(self, offset, length):
        return set(range(offset // BLOCK, -(-(offset + length) // BLOCK)))

    def expected_used(self, model, written):
        """Blocks the cache must hold: written ones whose bytes are not all zero."""
        return sum(1 for b in written if any(model[b * BLOCK : (b + 1) * BLOCK]))

    def change(self, op, offset, length, payload):
        fills = {o: self.upstream[o : o + n] for o, n in self.cache.needs_fill(offset, length)}
        for block_offset in fills:
            assert block_offset // BLOCK not in self.written
        after = bytearray(self.model)
        after[offset : offset + length] = payload
        written_after = self.written | self.blocks_of(offset, length)
        fits = self.expected_used(after, written_after) <= self.capacity
        try:
            if op == "write":
                self.cache.write(offset, payload, fills)
            else:
                getattr(self.cache, op)(offset, length, fills)
        except OSError as err:
            assert err.errno == errno.ENOSPC
            assert not fits
            assert self.cache.stats()["full"] is True
            return
        assert fits
        assert self.cache.stats()["full"] is False
        self.model = after
        self.written = written_after

    @rule(data=st.data(), fill=st.integers(0, 255), pattern=st.booleans())
    def write(self, data, fill, pattern):
        offset, length = data.draw(self.ranges())
        if pattern:
            payload = random.Random(fill).randbytes(length)
        else:
            payload = bytes([fill]) * length  # fill 0: a write of zeroes
        self.change("write", offset, length, payload)

    @rule(data=st.data(), op=st.sampled_from(["zero", "trim"]))
    def zero(self, data, op):
        offset, length = data.draw(self.ranges())
        self.change(op, offset, length, bytes(length))

    @rule(data=st.data())
    def read(self, data):
        offset, length = data.draw(self.ranges())
        plan = self.cache.read_plan(offset, length)
        assert assemble(plan, offset, length, self.upstream) == self.model[offset : offset + length]

    @precondition(lambda self: self.written)
    @rule()
    def read_everything(self):
        plan = self.cache.read_plan(0, self.disk_size)
        assert assemble(plan, 0, self.disk_size, self.upstream) == self.model

    @invariant()
    def tiers_within_capacity(self):
        stats = self.cache.stats()
        assert stats["ram_bytes"] <= self.ram_blocks * BLOCK
        assert stats["disk_bytes"] <= self.disk_blocks * BLOCK
        assert stats["blocks"] == self.expected_used(self.model, self.written)
        assert stats["capacity_bytes"] == self.capacity * BLOCK


MODEL_SETTINGS = settings(max_examples=60, stateful_step_count=30, deadline=None)


class DiskMachine(CacheMachine):
    kind = "device-disk"
    disk_size = 12 * BLOCK
    ram_blocks = 0
    disk_blocks = 5


class OverflowMachine(CacheMachine):
    kind = "device-ram-overflow"
    ram_blocks = 2
    disk_blocks = 3


class OverflowNoRamMachine(CacheMachine):
    kind = "device-ram-overflow"
    disk_size = 6 * BLOCK + 1
    ram_blocks = 0
    disk_blocks = 3


TestRamCacheModel = CacheMachine.TestCase
TestRamCacheModel.settings = MODEL_SETTINGS
TestDiskCacheModel = DiskMachine.TestCase
TestDiskCacheModel.settings = MODEL_SETTINGS
TestOverflowCacheModel = OverflowMachine.TestCase
TestOverflowCacheModel.settings = MODEL_SETTINGS
TestOverflowNoRamCacheModel = OverflowNoRamMachine.TestCase
TestOverflowNoRamCacheModel.settings = MODEL_SETTINGS
