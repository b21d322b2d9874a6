"""Crash safety: a child process writes to a qcow2 delta with periodic
flushes and is killed with SIGKILL at a random moment.

Invariant, in plain words: after the kill, `qemu-img check` reports no
corruption (leaked clusters are allowed), our layer and `qemu-img convert`
read the same bytes, every byte that only flushed operations wrote holds
what they wrote, and the image can be opened for writing again and stays
consistent."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vdfarm.block.qcow2 import Qcow2File
from vdfarm.block.raw import RawFile

from .qcow2_crash_child import crash_ops
from .qcow2_tools import check, create, flatten

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
FLUSH_EVERY = 6


def expected_after(seed: int, base: bytes, size: int, cluster: int, flushed: int):
    """(model after `flushed` ops, mask of bytes later ops may have touched)."""
    model = bytearray(size)
    model[: len(base)] = base
    uncertain = bytearray(size)
    for i, (kind, offset, length, data, _) in enumerate(crash_ops(seed, size, cluster)):
        if i >= flushed + FLUSH_EVERY + 1:
            break
        if i < flushed:
            model[offset : offset + length] = data if kind == "write" else bytes(length)
        else:
            uncertain[offset : offset + length] = b"\x01" * length
    return model, uncertain


def masked(data: bytes | bytearray, mask: bytearray) -> bytearray:
    """`data` with every byte under `mask` set to zero."""
    out = bytearray(data)
    start = None
    for pos in range(0, len(mask) + 1, 512):
        flagged = pos < len(mask) and mask.count(1, pos, pos + 512) > 0
        if flagged and start is None:
            start = pos
        elif not flagged and start is not None:
            out[start:pos] = bytes(pos - start)
            start = None
    return out


def run_and_kill(image: Path, base: Path, side: Path, seed: int, delay: float) -> int:
    """Start the child, let it flush at least once, kill it after `delay`
    more seconds; return the flushed operation count it recorded."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.block.qcow2_crash_child",
            str(image),
            str(base),
            str(side),
            str(seed),
            str(FLUSH_EVERY),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not (side.exists() and side.stat().st_size == 8):
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "child never flushed"
            time.sleep(0.01)
        time.sleep(delay)
        assert child.poll() is None, child.stderr.read().decode()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    return struct.unpack("<Q", side.read_bytes())[0]


@pytest.mark.parametrize(
    "iteration,cluster,refcount_bits",
    [
        (0, 512, 64),
        (1, 512, 16),
        (2, 4096, 64),
        (3, 4096, 16),
        (4, 65536, 16),
    ],
)
def test_kill_at_a_random_moment_loses_nothing_flushed(tmp_path, iteration, cluster, refcount_bits):
    rnd = random.Random(iteration)
    size = 4 * MIB + 512
    base, image, side = tmp_path / "base.raw", tmp_path / "top.qcow2", tmp_path / "flushed"
    base_data = rnd.randbytes(size - 70000)
    base.write_bytes(base_data)
    create(image, size, cluster, "1.1", backing="base.raw", refcount_bits=refcount_bits)
    seed = 1000 + iteration
    flushed = run_and_kill(image, base, side, seed, delay=rnd.uniform(0.02, 0.6))
    assert flushed > 0

    result = check(image)
    assert result.returncode in (0, 3), result.stdout + result.stderr
    below = RawFile(base, read_only=True)
    disk = Qcow2File(image, below, read_only=True)
    ours = disk.pread(0, disk.size)
    disk.close()
    assert ours == flatten(image)
    model, uncertain = expected_after(seed, base_data, size, cluster, flushed)
    assert masked(ours, uncertain) == masked(model, uncertain)

    again = Qcow2File(image, below, read_only=False)
    again.pwrite(12345, b"after the crash" * 1000)
    again.zero(2 * MIB, 3 * cluster, may_trim=True)
    again.close()
    below.close()
    result = check(image)
    assert result.returncode in (0, 3), result.stdout + result.stderr
    after = bytearray(ours)
    after[12345 : 12345 + 15000] = b"after the crash" * 1000
    after[2 * MIB : 2 * MIB + 3 * cluster] = bytes(3 * cluster)
    assert flatten(image) == after
    assert os.path.getsize(image) > 0
