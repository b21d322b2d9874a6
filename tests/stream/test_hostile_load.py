"""300 hostile connections against a real `vdfarm server run` while a real
device keeps streaming: slow handshakes, stalled WRITE payloads and READ
replies never read. The server's memory stays within a stated bound and
the device's fio run sees no error.

The bound, from the defaults: a connection in the handshake holds its
buffers (a few KiB); a stalled WRITE holds the bytes that arrived (here
4 KiB of a 32 MiB header); a client that reads no replies holds at most the
reply buffer (256 KiB) plus the reply that crossed it (256 KiB here) before
its requests stop being read. 100 of each: about 50 MiB at most (the
kernel's socket buffers take part of it), with Python's per-connection
objects on top: +64 MiB is the bound. (Before the limits, the same load
held 32 MiB per stalled WRITE header and 10 MiB per unread connection.)
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import time

import pytest

from tests.stream.rawclient import CMD_READ, CMD_WRITE, REQUEST_MAGIC, RawClient

RSS_BOUND_MIB = 64
PER_KIND = 100
ADDRESSES = [f"127.0.0.{10 + i}" for i in range(10)]  # 30 hostile connections each


@pytest.fixture(scope="session")
def db_kind() -> str:
    return "sqlite"  # the database plays no part here


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def hostile_handshake(port: int, source: str) -> socket.socket:
    """Reads the greeting, then says nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.recv(18)
    return sock


def stalled_write(port: int, source: str, device: str) -> RawClient:
    """A WRITE header for 32 MiB, 4 KiB of its payload, then nothing."""
    client = RawClient(port, source=source)
    client.connect(device)
    header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, 32 << 20)
    client.sock.sendall(header + b"\xee" * 4096)
    return client


def unread_replies(port: int, source: str, device: str) -> RawClient:
    """40 READs of 256 KiB (10 MiB) whose replies are never read."""
    client = RawClient(port, source=source)
    client.connect(device)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in range(40):
        client.request(CMD_READ, 0, 256 * 1024)
    return client


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_300_hostile_connections_cost_a_bounded_memory_and_no_error(farm, test_image):
    farm.cli("vdisk", "import", "golden", str(test_image))
    farm.cli("device", "add", "good", "--vdisk", "golden")
    for i in range(len(ADDRESSES)):
        farm.cli("device", "add", f"h{i}", "--vdisk", "golden")
    farm.start(grace=0)
    pid = farm.server.pid
    warm = RawClient(farm.port)  # one device session open, so the baseline has one
    warm.connect("good")
    assert warm.call(CMD_READ, 0, 4096)[0] == 0
    baseline = rss_mib(pid)
    fio = subprocess.Popen(
        ["fio", "--name=good", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{farm.port}/good"]
        + ["--rw=randread", "--bs=4k", "--iodepth=8", "--runtime=15", "--time_based"]
        + ["--size=64m", "--output-format=json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    hostile: list[socket.socket | RawClient] = []
    peak = baseline
    try:
        time.sleep(1)  # fio connected and reading
        for i, source in enumerate(ADDRESSES):
            device = f"h{i}"
            for _ in range(PER_KIND // len(ADDRESSES)):
                hostile.append(hostile_handshake(farm.port, source))
                hostile.append(stalled_write(farm.port, source, device))
                hostile.append(unread_replies(farm.port, source, device))
            peak = max(peak, rss_mib(pid))
        assert len(hostile) == 3 * PER_KIND
        for _ in range(20):  # let the server take in what it will
            time.sleep(0.25)
            peak = max(peak, rss_mib(pid))
        out, err = fio.communicate(timeout=60)
    finally:
        for h in hostile:
            (h if isinstance(h, socket.socket) else h.sock).close()
        warm.close()
        if fio.poll() is None:
            fio.kill()
    assert fio.returncode == 0, err
    job = json.loads(out[out.index("{") :])["jobs"][0]
    assert job["error"] == 0 and job["read"]["io_bytes"] > 0
    grown = peak - baseline
    print(f"server RSS {baseline:.0f} MiB -> peak {peak:.0f} MiB (+{grown:.1f} MiB)")
    assert grown < RSS_BOUND_MIB, f"+{grown:.1f} MiB under 300 hostile connections"
    assert farm.server.poll() is None  # still serving
