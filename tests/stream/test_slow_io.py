"""One slow disk does not stall the other devices: reads that miss the page
cache and the sync of FUA writes run off the event loop.

A real StreamServer over the in-memory farm (test_port_fake's `serving`).
The slow disk is made deterministic, not timed: its I/O blocks on a gate
the test opens only after the other device's 50 reads are all answered. So
the assertion is an ordering (the reads finished while the slow I/O was
still held), and against code that does the I/O on the event loop the gate
times out first, which the test reports.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from pathlib import Path

import pytest

from tests.stream.fake_port import FakeFarm, target
from tests.stream.rawclient import CMD_READ, CMD_TRIM, CMD_WRITE, FLAG_FUA
from tests.stream.test_port_fake import connect, eventually, goodbye, run, serving
from vdfarm.block.layer import Layer
from vdfarm.block.nowait import ColdRead
from vdfarm.nbd.limits import ConnectionLimits
from vdfarm.stream import chains

SIZE = 1 << 20
HOLD_S = 10  # the gate's own timeout: far beyond what 50 loopback reads take


@pytest.fixture(scope="session")
def db_kind() -> str:
    """No database at all: the farm is in memory."""
    return "none"


class Gate:
    """Slow I/O waits here until the test opens it (or HOLD_S passes)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.timed_out = False

    def hold(self) -> None:
        self.entered.set()
        if not self.opened.wait(HOLD_S):
            self.timed_out = True


class SlowFile(Layer):
    """Test-only wrapper of one file: every read misses the page cache, and
    the read itself (in whatever thread runs it) waits at the gate."""

    def __init__(self, next: Layer, gate: Gate) -> None:
        super().__init__(next)
        self.gate = gate

    def pread(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        self.gate.hold()
        return self.next.pread(offset, length)

    def try_pread(self, offset: int, length: int) -> ColdRead:
        ranges = self.next.file_ranges(offset, length)
        assert ranges is not None
        gate = self.gate
        cold = ColdRead(tuple(ranges), length)
        # A ColdRead whose first piece waits at the gate: a bytes-like
        # source read in the worker (ColdRead slices it there).
        return ColdRead(((_Held(gate, cold), 0, length),), length)

    def file_ranges(self, offset: int, length: int) -> None:
        return None  # no sendfile around the slowness


class _Held:
    """Sliced in the worker thread: waits at the gate, then reads."""

    def __init__(self, gate: Gate, cold: ColdRead) -> None:
        self.gate, self.cold = gate, cold

    def __getitem__(self, _: slice) -> bytes:
        self.gate.hold()
        return bytes(self.cold())


@pytest.fixture
def images(tmp_path) -> tuple[Path, Path, Path]:
    paths = tuple(tmp_path / name for name in ("slow.raw", "fast.raw", "mine.raw"))
    for path in paths:
        path.write_bytes(os.urandom(SIZE))
    return paths  # type: ignore[return-value]


@pytest.fixture
def farm(images) -> FakeFarm:
    slow, fast, mine = images
    return FakeFarm(
        target(1, "slowpc", slow, vdisk_id=1, vdisk="slowdisk"),
        target(2, "fastpc", fast, vdisk_id=2, vdisk="fastdisk"),
        target(3, "solo", mine, mode="private", vdisk_id=3, vdisk="mine"),
    )


async def fifty_reads(client, image: bytes) -> None:
    for i in range(50):
        offset = (i * 7919 * 4096) % (SIZE - 4096)
        error, data = await asyncio.to_thread(client.call, CMD_READ, offset, 4096)
        assert error == 0
        assert data == image[offset : offset + 4096]


def test_a_cold_read_does_not_delay_another_devices_reads(
    tmp_path, farm, images, monkeypatch
) -> None:
    slow_path, fast_path, _ = images
    gate = Gate()
    real_open = chains.open_file

    def open_file(path: Path, fmt: str, backing: Layer | None, read_only: bool) -> Layer:
        layer = real_open(path, fmt, backing, read_only)
        return SlowFile(layer, gate) if path == slow_path else layer

    monkeypatch.setattr(chains, "open_file", open_file)

    async def scenario() -> None:
        async with serving(farm, tmp_path) as (_, port):
            slow = await connect(port, "slowpc")
            fast = await connect(port, "fastpc")
            try:
                cookie = slow.request(CMD_READ, 8192, 4096)
                assert await asyncio.to_thread(gate.entered.wait, 10)
                await fifty_reads(fast, fast_path.read_bytes())
                # All 50 answered while the slow read still waits at the gate.
                assert not gate.timed_out, "the other device's reads waited for the slow disk"
                assert not select.select([slow.sock], [], [], 0)[0]  # no reply yet
                gate.opened.set()
                error, got, data = await asyncio.to_thread(slow.reply, 4096)
                assert (error, got) == (0, cookie)
                assert data == slow_path.read_bytes()[8192 : 8192 + 4096]
                await goodbye(slow)
                await goodbye(fast)
            finally:
                gate.opened.set()
                slow.close()
                fast.close()

    run(scenario)


@pytest.mark.parametrize("command", [CMD_WRITE, CMD_TRIM])
def test_a_slow_fua_sync_does_not_delay_another_devices_reads(
    tmp_path, farm, images, monkeypatch, command
) -> None:
    _, fast_path, mine = images
    gate = Gate()
    real_fdatasync = os.fdatasync
    payload = os.urandom(4096) if command == CMD_WRITE else b""
    seen_at_sync: list[bytes] = []

    def fdatasync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(mine):
            with open(mine, "rb") as f:  # what the file holds when the sync starts
                f.seek(65536)
                seen_at_sync.append(f.read(4096))
            gate.hold()
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)

    async def scenario() -> None:
        async with serving(farm, tmp_path) as (_, port):
            solo = await connect(port, "solo")
            fast = await connect(port, "fastpc")
            try:
                cookie = solo.request(command, 65536, 4096, FLAG_FUA, payload)
                assert await asyncio.to_thread(gate.entered.wait, 10)
                await fifty_reads(fast, fast_path.read_bytes())
                assert not gate.timed_out, "the other device's reads waited for the FUA sync"
                # A FUA change is answered only once it is durable: not yet.
                assert not select.select([solo.sock], [], [], 0)[0]
                # ...and the change itself was made before the sync started.
                expected = payload if command == CMD_WRITE else bytes(4096)
                assert seen_at_sync == [expected]
                gate.opened.set()
                error, got, _ = await asyncio.to_thread(solo.reply)
                assert (error, got) == (0, cookie)
                error, data = await asyncio.to_thread(solo.call, CMD_READ, 65536, 4096)
                assert error == 0 and data == expected
                await goodbye(solo)
                await goodbye(fast)
            finally:
                gate.opened.set()
                solo.close()
                fast.close()

    run(scenario)


def test_cold_reads_in_flight_are_bounded(tmp_path, farm, images, monkeypatch) -> None:
    """Past 4 x the reply bound of reads waiting for the executor, the
    connection reads no more requests; they are served once the reads end."""
    slow_path, _, _ = images
    gate = Gate()
    real_open = chains.open_file

    def open_file(path: Path, fmt: str, backing: Layer | None, read_only: bool) -> Layer:
        layer = real_open(path, fmt, backing, read_only)
        return SlowFile(layer, gate) if path == slow_path else layer

    monkeypatch.setattr(chains, "open_file", open_file)
    limits = ConnectionLimits(max_reply_buffer=64 * 1024)  # deferred bound: 256 KiB

    async def scenario() -> None:
        async with serving(farm, tmp_path, limits=limits) as (server, port):
            slow = await connect(port, "slowpc")
            try:
                cookies = [slow.request(CMD_READ, i * 65536, 65536) for i in range(10)]
                (conn,) = server.connections
                await eventually(lambda: conn._deferred == 5, "5 reads deferred")
                await asyncio.sleep(0.2)
                assert conn._deferred == 5  # the 5th passed the bound: parsing stopped
                gate.opened.set()
                image = slow_path.read_bytes()
                answered = set()
                for _ in cookies:
                    error, got, data = await asyncio.to_thread(slow.reply, 65536)
                    assert error == 0
                    start = (got - cookies[0]) * 65536
                    assert data == image[start : start + 65536], got
                    answered.add(got)
                assert answered == set(cookies)
                await goodbye(slow)
            finally:
                gate.opened.set()
                slow.close()

    run(scenario)
