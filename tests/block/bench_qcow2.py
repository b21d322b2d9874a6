"""Read benchmark of a qcow2 version chain (not a test: pytest does not collect it).

Run: .venv/bin/python -m tests.block.bench_qcow2 [size_mib] [depth]
Builds a raw base of random data and `depth` qcow2 deltas on it with
qemu-img/qemu-io (each delta rewrites a random ~10% of 64 KiB clusters, in
runs, with a few 4 KiB writes and zeroed ranges), flattens the chain with
qemu-img convert, and prints CPU µs per random read for RawFile on the flat
file and for the top Qcow2File of the chain: 4 KiB pread (alone, and
under a CheckedStack as the stream server calls it), 1 MiB pread, and
1 MiB as the stream server sends big reads (file_ranges, then sendfile(2),
here to /dev/null, which costs next to nothing, so that line shows the
chain's resolving overhead; ranges with zeroes fall back to pread as in the
server).
"warm" is after one pass over the disk (the chain resolver's cache is
filled), "cold" a freshly opened chain. Everything is in the page cache;
malloc is tuned as `vdfarm server` tunes it. CPU time (process_time), best
of several runs: wall time on a shared machine is too noisy.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import timeit

from vdfarm.block.qcow2 import Qcow2File
from vdfarm.block.raw import RawFile
from vdfarm.block.stack import CheckedStack

MIB = 1 << 20
CLUSTER = 64 * 1024


def per_call_us(read, offsets, length: int, repeat: int = 7) -> float:
    """Best of `repeat` runs, CPU µs per read of `length` at the given offsets."""

    def run():
        for offset in offsets:
            read(offset, length)

    timer = timeit.Timer(run, timer=time.process_time)
    return min(timer.repeat(number=1, repeat=repeat)) / len(offsets) * 1e6


def tune_malloc() -> None:
    """What vdfarm.stream.server does: big buffers from the heap, not fresh mmaps."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * MIB)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 256 * MIB)  # M_TRIM_THRESHOLD


def sender(layer, sink: int):
    """A read as the stream server does it for big requests."""

    def send(offset: int, length: int) -> None:
        ranges = layer.file_ranges(offset, length)
        if ranges is None:
            layer.pread(offset, length)
            return
        for fd, pos, n in ranges:
            while n:
                sent = os.sendfile(sink, fd, pos, n)
                pos += sent
                n -= sent

    return send


def delta_commands(rnd: random.Random, size: int, level: int) -> str:
    """qemu-io commands for one delta, one per line."""
    lines = []
    clusters = size // CLUSTER
    written = 0
    while written < clusters // 10:
        run = rnd.randint(1, 8)
        first = rnd.randrange(clusters - run)
        lines.append(f"write -P {level * 16 + rnd.randrange(16)} {first * CLUSTER} {run * CLUSTER}")
        written += run
    for _ in range(50):
        lines.append(f"write -P {level} {rnd.randrange(size // 4096) * 4096} 4096")
    for _ in range(5):
        lines.append(f"write -z {rnd.randrange(clusters - 4) * CLUSTER} {4 * CLUSTER}")
    return "\n".join(lines) + "\n"


def build_chain(workdir: str, size: int, depth: int) -> list[str]:
    """Base raw + `depth` deltas; returns the paths, base first."""
    rnd = random.Random(7)
    base = os.path.join(workdir, "base.raw")
    with open(base, "wb") as f:
        f.writelines(rnd.randbytes(MIB) for _ in range(size // MIB))
    paths = [base]
    for level in range(1, depth + 1):
        path = os.path.join(workdir, f"v{level}.qcow2")
        parent_fmt = "raw" if level == 1 else "qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                os.path.basename(paths[-1]),
                "-F",
                parent_fmt,
                path,
                str(size),
            ],
            check=True,
            cwd=workdir,
        )
        subprocess.run(
            ["qemu-io", "-f", "qcow2", path],
            input=delta_commands(rnd, size, level),
            text=True,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        paths.append(path)
    return paths


def open_chain(paths: list[str]) -> list:
    layers = [RawFile(paths[0], read_only=True)]
    for path in paths[1:]:
        layers.append(Qcow2File(path, layers[-1], read_only=True))
    return layers


def main(size_mib: int = 256, depth: int = 5) -> None:
    size = size_mib * MIB
    tune_malloc()
    workdir = tempfile.mkdtemp(prefix="vdfarm-qcow2-bench-")
    try:
        paths = build_chain(workdir, size, depth)
        flat_path = os.path.join(workdir, "flat.raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw", paths[-1], flat_path], check=True)
        flat = RawFile(flat_path, read_only=True)
        layers = open_chain(paths)
        top = layers[-1]
        rnd = random.Random(1)
        small = [rnd.randrange(size // 4096) * 4096 for _ in range(20000)]
        big = [rnd.randrange(size // MIB) * MIB for _ in range(300)]
        assert all(top.pread(o, MIB) == flat.pread(o, MIB) for o in big[:50])
        for offset in range(0, size, MIB):  # warm the page cache and the map cache
            top.pread(offset, MIB)
            flat.pread(offset, MIB)
        print(f"{depth}-deep chain of {size_mib} MiB, 64 KiB clusters, page cache warm")
        sink = os.open(os.devnull, os.O_WRONLY)
        cases = (
            ("4 KiB pread", 4096, small, lambda layer: layer.pread),
            ("4 KiB stacked", 4096, small, lambda layer: CheckedStack(layer).pread),
            ("1 MiB pread", MIB, big, lambda layer: layer.pread),
            ("1 MiB sendfile", MIB, big, lambda layer: sender(layer, sink)),
        )
        for name, length, offsets, how in cases:
            raw_us = per_call_us(how(flat), offsets, length)
            warm_us = per_call_us(how(top), offsets, length)
            cold = []
            for _ in range(3):
                fresh = open_chain(paths)
                cold.append(per_call_us(how(fresh[-1]), offsets, length, repeat=1))
                for layer in fresh:
                    layer.close()
            print(
                f"{name:15} raw {raw_us:7.2f} µs   chain warm {warm_us:7.2f} µs "
                f"(raw/chain {raw_us / warm_us:4.2f})   chain cold {min(cold):7.2f} µs"
            )
        os.close(sink)
        for layer in layers:
            layer.close()
        flat.close()
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
