"""Writable Qcow2File against a plain bytearray model, by random operations.

Invariant, in plain words: after any sequence of writes, zeroes, trims,
flushes and close/reopen cycles at any offsets and lengths, every read
returns what the bytearray says, every extent that claims zeroes reads as
zeroes, the backing layer is unchanged, and at the end `qemu-img check`
finds no error and no leak (and, over a raw file, `qemu-img compare` finds
the model's content).

Model of trim: whole clusters read as zeroes afterwards when the image can
say so (version 3, or no backing file); otherwise trim changes nothing.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from vdfarm.block.layer import EXTENT_ZERO
from vdfarm.block.memory import MemoryDisk
from vdfarm.block.qcow2 import Qcow2File
from vdfarm.block.raw import RawFile

from .model_ranges import ranges_near_edges
from .qcow2_tools import check, compare_with_raw, create


@functools.cache
def template(cluster: int, compat: str, size: int, backing_raw: bool) -> bytes:
    """An empty image made once by qemu-img; examples start from a copy."""
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "t.qcow2")
        open(os.path.join(workdir, "base.raw"), "wb").close()
        create(
            path,
            size,
            cluster,
            compat,
            backing="base.raw" if backing_raw else None,
            refcount_bits=64 if cluster == 512 and compat == "1.1" else 16,
        )
        with open(path, "rb") as f:
            return f.read()


class Qcow2Machine(RuleBasedStateMachine):
    cluster = 4096
    compat = "1.1"
    disk_size = 96 * 1024 + 512
    backing_kind = "memory"  # "memory", "raw" (a file qemu can see) or "none"

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="vdfarm-qcow2-model-")
        self.path = os.path.join(self.dir, "top.qcow2")
        rnd = random.Random(self.disk_size)
        self.base = rnd.randbytes(self.disk_size - self.cluster - 512)  # shorter than the disk
        with open(self.path, "wb") as f:
            f.write(template(self.cluster, self.compat, self.disk_size, self.backing_kind == "raw"))
        self.lower = self._open_lower()
        self.disk = Qcow2File(self.path, self.lower, read_only=False)
        self.model = bytearray(self.disk_size)
        if self.lower is not None:
            self.model[: len(self.base)] = self.base

    def _open_lower(self):
        if self.backing_kind == "none":
            return None
        if self.backing_kind == "memory":
            return MemoryDisk(len(self.base), initial=self.base)
        base_path = os.path.join(self.dir, "base.raw")
        with open(base_path, "wb") as f:
            f.write(self.base)
        return RawFile(base_path, read_only=True)

    def teardown(self):
        try:
            self.disk.close()
            result = check(self.path)
            assert result.returncode == 0, result.stdout + result.stderr
            if self.backing_kind != "memory":
                model_path = os.path.join(self.dir, "model.raw")
                with open(model_path, "wb") as f:
                    f.write(self.model)
                result = compare_with_raw(self.path, model_path)
                assert result.returncode == 0, result.stdout
            if self.lower is not None:
                assert self.lower.pread(0, self.lower.size) == self.base
                self.lower.close()
        finally:
            shutil.rmtree(self.dir)

    def ranges(self):
        """(offset, length) inside the disk, often on or next to cluster edges."""
        return ranges_near_edges(self.disk_size, self.cluster, 3)

    @rule(data=st.data(), fill=st.integers(1, 255))
    def write(self, data, fill):
        offset, length = data.draw(self.ranges())
        payload = bytes([fill]) * length
        self.disk.pwrite(offset, payload, fua=data.draw(st.booleans()))
        self.model[offset : offset + length] = payload

    @rule(data=st.data())
    def zero(self, data):
        offset, length = data.draw(self.ranges())
        fast = self.compat == "1.1" and data.draw(st.booleans())
        self.disk.zero(offset, length, may_trim=data.draw(st.booleans()), fast=fast)
        self.model[offset : offset + length] = bytes(length)

    @rule(data=st.data())
    def trim(self, data):
        offset, length = data.draw(self.ranges())
        self.disk.trim(offset, length)
        if self.compat == "1.1" or self.lower is None:
            cs = self.cluster
            first = -(-offset // cs) * cs
            stop = offset + length
            end = stop // cs * cs if stop < self.disk_size else stop
            if end > first:
                self.model[first:end] = bytes(end - first)

    @rule()
    def flush(self):
        self.disk.flush()

    @rule()
    def reopen(self):
        self.disk.close()
        self.disk = Qcow2File(self.path, self.lower, read_only=False)

    @rule(data=st.data())
    def read_some(self, data):
        offset, length = data.draw(self.ranges())
        assert self.disk.pread(offset, length) == self.model[offset : offset + length]

    @invariant()
    def reads_and_extents_match(self):
        assert self.disk.pread(0, self.disk_size) == self.model
        pos = 0
        for extent in self.disk.extents(0, self.disk_size):
            if extent.flags & EXTENT_ZERO:
                assert self.model.count(0, pos, pos + extent.length) == extent.length
            pos += extent.length
        assert pos == self.disk_size


def _case(name, **attributes):
    machine = type(name, (Qcow2Machine,), attributes)
    machine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
    return machine.TestCase


TestQcow2V3OverMemory = _case("V3OverMemory")
TestQcow2V3SmallClustersOverRaw = _case(
    "V3SmallOverRaw", cluster=512, backing_kind="raw", disk_size=40 * 1024 + 512
)
TestQcow2V2OverRaw = _case("V2OverRaw", compat="0.10", backing_kind="raw")
TestQcow2V2NoBacking = _case(
    "V2NoBacking", compat="0.10", backing_kind="none", cluster=512, disk_size=32 * 1024 + 512
)
TestQcow2V3NoBacking64K = _case(
    "V3NoBacking64K", cluster=65536, backing_kind="none", disk_size=5 * 65536 + 1024
)
