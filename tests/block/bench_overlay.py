"""Read benchmark of the block stack (not a test: pytest does not collect it).

Run: .venv/bin/python -m tests.block.bench_overlay [size_mib]
Prints µs per random 4 KiB read and per random 1 MiB read for os.pread,
RawFile, CheckedStack(RawFile) and CheckedStack(WriteCacheOverlay(RawFile))
with nothing cached, every other 4 KiB block cached, every other 1 MiB cached.
glibc's malloc settings change the 1 MiB figures a lot (page faults on fresh
buffers); compare with MALLOC_MMAP_THRESHOLD_=67108864
MALLOC_TRIM_THRESHOLD_=268435456 in the environment.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import timeit

from vdfarm.block.cow import WriteCacheOverlay
from vdfarm.block.raw import RawFile
from vdfarm.block.stack import CheckedStack

MIB = 1 << 20


def per_call_us(read, offsets, length: int, number: int) -> float:
    """Best of 5 runs, µs per read of `length` at the given offsets."""

    def run():
        for offset in offsets[:number]:
            read(offset, length)

    return min(timeit.repeat(run, number=1, repeat=5)) / number * 1e6


def main(size_mib: int = 256) -> None:
    size = size_mib * MIB
    workdir = tempfile.mkdtemp(prefix="vdfarm-bench-")
    try:
        base = os.path.join(workdir, "base.raw")
        with open(base, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(MIB))
        rng = random.Random(1)
        small = [rng.randrange(size // 4096) * 4096 for _ in range(20000)]
        large = [rng.randrange(size_mib) * MIB for _ in range(300)]
        raw = RawFile(base, read_only=True)
        fd = os.open(base, os.O_RDONLY)
        every_other_block = WriteCacheOverlay(raw, os.path.join(workdir, "c1"))
        block = os.urandom(4096)
        for offset in range(0, size, 8192):
            every_other_block.pwrite(offset, block)
        every_other_mib = WriteCacheOverlay(raw, os.path.join(workdir, "c2"))
        chunk = os.urandom(MIB)
        for offset in range(0, size, 2 * MIB):
            every_other_mib.pwrite(offset, chunk)
        cases = [
            ("os.pread", lambda o, n: os.pread(fd, n, o)),
            ("RawFile", raw.pread),
            ("CheckedStack(RawFile)", CheckedStack(raw).pread),
            (
                "stack+overlay, nothing cached",
                CheckedStack(WriteCacheOverlay(raw, os.path.join(workdir, "c0"))).pread,
            ),
            ("stack+overlay, every other 4K cached", CheckedStack(every_other_block).pread),
            ("stack+overlay, every other 1M cached", CheckedStack(every_other_mib).pread),
        ]
        for name, read in cases:
            read(0, MIB)
            print(
                f"{name:40s} 4 KiB {per_call_us(read, small, 4096, 20000):7.2f} µs"
                f"   1 MiB {per_call_us(read, large, MIB, 300):8.1f} µs"
            )
        os.close(fd)
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
