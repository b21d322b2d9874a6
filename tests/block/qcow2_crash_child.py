"""The victim of the qcow2 crash test (run as a child process, then SIGKILLed).

Run: python -m tests.block.qcow2_crash_child IMAGE BASE SIDE SEED FLUSH_EVERY
Opens IMAGE writable over the raw file BASE and applies `crash_ops(SEED)`
forever, flushing every FLUSH_EVERY operations; after each flush returns,
it stores the number of operations done (all flushed) in SIDE as 8 bytes.
"""

from __future__ import annotations

import os
import random
import struct
import sys


def crash_ops(seed: int, size: int, cluster: int):
    """Endless (kind, offset, length, data, may_trim); same seed, same ops."""
    rnd = random.Random(seed)
    while True:
        length = min(size, rnd.choice([1, 700, cluster, cluster + 3, 3 * cluster, 50000]))
        offset = rnd.randrange(size - length + 1)
        if rnd.random() < 0.8:
            yield "write", offset, length, rnd.randbytes(length), False
        else:
            yield "zero", offset, length, None, rnd.random() < 0.5


def main(image: str, base: str, side: str, seed: int, flush_every: int) -> None:
    from vdfarm.block.qcow2 import Qcow2File
    from vdfarm.block.raw import RawFile

    below = RawFile(base, read_only=True)
    disk = Qcow2File(image, below, read_only=False)
    side_fd = os.open(side, os.O_WRONLY | os.O_CREAT, 0o600)
    ops = crash_ops(seed, disk.size, disk.cluster_size)
    for done, (kind, offset, length, data, may_trim) in enumerate(ops, start=1):
        if kind == "write":
            disk.pwrite(offset, data)
        else:
            disk.zero(offset, length, may_trim=may_trim)
        if done % flush_every == 0:
            disk.flush()
            os.pwrite(side_fd, struct.pack("<Q", done), 0)


if __name__ == "__main__":
    image, base, side, seed, flush_every = sys.argv[1:6]
    main(image, base, side, int(seed), int(flush_every))
