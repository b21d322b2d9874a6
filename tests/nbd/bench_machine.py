"""Micro-benchmark of the NBD server machine's transmission path (no I/O,
not a test: pytest does not collect it).

Run: PYTHONPATH=. python tests/nbd/bench_machine.py [N]
To compare two versions, run it alternately with PYTHONPATH pointing at
each and keep the best figure of each (the machines are shared and noisy).
Figures of the STARTTLS/limits change: docs/security.md, "NBD protocol
limits and TLS".
"""

from __future__ import annotations

import struct
import sys
import time

from vdfarm.nbd import constants as c
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection


def opt(o: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", c.IHAVEOPT, o, len(data)) + data


def machine() -> ServerConnection:
    conn = ServerConnection()
    conn.start()
    name = b"disk"
    conn.receive_data(
        struct.pack(">I", 3)
        + opt(c.OPT_STRUCTURED_REPLY)
        + opt(c.OPT_GO, struct.pack(">I", 4) + name + b"\0\0")
    )
    conn.next_event()
    conn.accept_export(ExportInfo(1 << 40, c.FLAG_SEND_FLUSH | c.FLAG_SEND_FUA))
    conn.data_to_send()
    return conn


def req(cmd: int, cookie: int, offset: int, length: int) -> bytes:
    return struct.pack(">IHHQQI", c.REQUEST_MAGIC, 0, cmd, cookie, offset, length)


def bench_read(n: int) -> float:
    conn = machine()
    hdr = req(c.CMD_READ, 7, 4096, 4096)
    recv, nxt, rh = conn.receive_data, conn.next_event, conn.reply_read_header
    t = time.perf_counter()
    for _ in range(n):
        recv(hdr)
        ev = nxt()
        rh(ev.cookie, ev.offset, ev.length)
    return time.perf_counter() - t


def bench_write(n: int, size: int, split: int) -> float:
    """n WRITEs of `size` bytes, each fed as header+payload in pieces of `split` bytes."""
    conn = machine()
    raw = req(c.CMD_WRITE, 9, 0, size) + bytes(size)
    pieces = [raw[i : i + split] for i in range(0, len(raw), split)]
    recv, nxt, ok = conn.receive_data, conn.next_event, conn.reply_ok
    t = time.perf_counter()
    for _ in range(n):
        for p in pieces:
            recv(p)
            ev = nxt()
        assert ev is not NEED_DATA
        ok(ev.cookie)
    return time.perf_counter() - t


def best(f, *a, repeat: int = 5) -> float:
    return min(f(*a) for _ in range(repeat))


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    r = best(bench_read, n)
    print(f"READ header+next_event+reply_read_header x{n}: {r:.3f}s ({r / n * 1e9:.0f} ns each)")
    w = 100_000
    for size, split, label in [
        (65536, 65536 + 28, "64 KiB WRITE whole in one receive_data"),
        (4096, 4096 + 28, "4 KiB WRITE whole in one receive_data"),
        (65536, 16384, "64 KiB WRITE in 16 KiB receive_data pieces"),
        (1 << 20, 65536, "1 MiB WRITE in 64 KiB receive_data pieces"),
    ]:
        k = w if size <= 65536 else w // 16
        t = best(bench_write, k, size, split)
        print(
            f"{label} x{k}: {t:.3f}s ({t / k * 1e6:.2f} us each, {size * k / t / 2**30:.2f} GiB/s)"
        )
