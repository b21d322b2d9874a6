"""The session over real NBD connections to small in-test servers
(tests/agent/fake_server.py): failover on a dead or hung server, the
identity check, give-up, move orders, private mode, the device cache."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os

from tests.agent.fake_server import FakeFarm, FakeServer, identity
from vdfarm.agent.session import Session
from vdfarm.agent.session_types import SessionOptions
from vdfarm.agent.upstream import open_upstream
from vdfarm.nbd import constants as c

DATA = os.urandom(1 << 20)
DEVICE = "pc1"


async def connect(ref, on_lost):
    return await open_upstream(
        ref.host, ref.nbd_port, DEVICE, name=ref.name, timeout=1.0, on_lost=on_lost
    )


async def farm_of(*names: str, failover: bool = True, cache: str = "none", data: bytes = DATA):
    servers = [FakeServer(name, DEVICE, data) for name in names]
    for server in servers:
        await server.start()
    return servers, FakeFarm(servers, data, failover=failover, write_cache_type=cache)


def session_for(farm: FakeFarm, **options) -> Session:
    first = farm.answer(farm.servers[0])
    cache = options.pop("cache", None)
    io_timeout = options.pop("io_timeout", 0.3)
    on_failover = options.pop("on_failover", lambda record: None)
    connect_to = options.pop("connect", connect)
    return Session(
        first,
        farm.login,
        connect_to,
        SessionOptions(io_timeout=io_timeout, **options),
        cache=cache,
        on_failover=on_failover,
    )


async def read_loop(session: Session, count: int, size: int = 65536) -> None:
    """COUNT reads across the disk, each compared with the data."""
    for n in range(count):
        offset = (n * size) % len(DATA)
        error, data = await session.handle(c.CMD_READ, 0, offset, size, None)
        assert error == 0
        assert data == DATA[offset : offset + size]


def test_reads_go_on_when_the_server_dies():
    async def main():
        (s1, s2), farm = await farm_of("s1", "s2")
        session = session_for(farm)
        await session.start()
        assert session.server == "s1"
        reads = [asyncio.create_task(read_loop(session, 10)) for _ in range(32)]
        await asyncio.sleep(0)  # the first reads are on their way
        s1.kill()
        await asyncio.gather(*reads)
        await read_loop(session, 10)
        assert session.server == "s2"
        [record] = session.failovers
        assert (record.from_server, record.to_server) == ("s1", "s2")
        assert record.pause_ms is not None
        print(f"pause after a kill: {record.pause_ms} ms, {record.retried} sent again")
        assert ["s1"] in farm.logins  # the failed server was excluded
        await session.close()

    asyncio.run(main())


class RecordingClient:
    """A local connection as the session sees it: answers by cookie."""

    def __init__(self) -> None:
        self.answers: dict[int, tuple[int, bytes]] = {}
        self.flushes = 0
        self.done = asyncio.Event()
        self.expected = 0

    def answer(self, cookie, cmd, offset, length, error, payload):
        self.answers[cookie] = (error, b"".join(payload or ()))
        if len(self.answers) == self.expected:
            self.done.set()

    def flush(self):
        self.flushes += 1


def test_fast_path_requests_are_sent_again_after_a_kill_and_a_server_leaving():
    """Requests queued by `submit` (no task each, replies by batch): the
    ones in flight when the server dies, or answered ESHUTDOWN by a server
    that leaves, are answered by the next server, none with an error."""

    async def main():
        (s1, s2, s3), farm = await farm_of("s1", "s2", "s3")
        session = session_for(farm, io_timeout=1.0)
        await session.start()
        client = RecordingClient()
        offsets = {}
        for round_no, trouble in enumerate(("kill", "leave")):
            client.expected += 64
            client.done.clear()
            for n in range(64):
                cookie = round_no * 64 + n + 1
                offsets[cookie] = (n * 8192) % len(DATA)
                session.submit(client, cookie, c.CMD_READ, 0, offsets[cookie], 8192, None)
            session.flush()
            await asyncio.sleep(0)
            serving = {"s1": s1, "s2": s2, "s3": s3}[session.server]
            if trouble == "kill":
                serving.kill()
            else:
                farm.home = next(s.name for s in (s1, s2, s3) if s.up and s is not serving)
                serving.mode = "shutdown"
            await asyncio.wait_for(client.done.wait(), 30)
        for cookie, (error, data) in client.answers.items():
            assert error == 0 and data == DATA[offsets[cookie] : offsets[cookie] + 8192]
        assert client.flushes >= 1
        [failover] = session.failovers
        assert failover.from_server == "s1" and failover.retried >= 1
        [move] = session.moves
        assert move.from_server == failover.to_server and move.retried >= 1
        print(f"sent again: {failover.retried} after the kill, {move.retried} after the leave")
        await session.close()

    asyncio.run(main())


def test_a_hung_server_is_failed_after_the_io_timeout():
    async def main():
        (s1, s2), farm = await farm_of("s1", "s2")
        session = session_for(farm, io_timeout=0.3)
        await session.start()
        s1.mode = "hang"
        await read_loop(session, 50)
        assert session.server == "s2"
        [record] = session.failovers
        assert "unanswered" in record.reason and record.retried >= 1
        print(f"pause after a hang: {record.pause_ms} ms")
        await session.close()

    asyncio.run(main())


def test_a_failover_to_a_server_that_never_answers_gets_its_pause_too():
    async def main():
        (s1, s2, s3), farm = await farm_of("s1", "s2", "s3")
        reported = []
        session = session_for(farm, io_timeout=0.3, on_failover=reported.append)
        await session.start()
        s2.mode = "deaf"  # takes the device, then answers nothing
        s1.kill()
        await read_loop(session, 5)
        assert session.server == "s3"
        first, second = session.failovers
        assert (first.from_server, first.to_server) == ("s1", "s2")
        assert (second.from_server, second.to_server) == ("s2", "s3")
        assert first.pause_ms is not None and second.pause_ms is not None
        assert second.pause_ms >= first.pause_ms  # the device's stall spans both
        assert reported == [first, second]  # both reach the farm
        await session.close()

    asyncio.run(main())


def recording(tried: list[str]):
    """`connect`, noting the name of every server it is asked for in TRIED."""

    async def connect_noting(ref, on_lost):
        tried.append(ref.name)
        return await connect(ref, on_lost)

    return connect_noting


def test_a_server_that_failed_lately_is_passed_over_at_the_next_failover():
    async def main():
        (s1, s2, s3), farm = await farm_of("s1", "s2", "s3")
        farm.names_dead = True  # the farm has not noticed that s1 died
        tried: list[str] = []
        session = session_for(farm, connect=recording(tried))
        await session.start()
        s1.kill()
        await read_loop(session, 5)
        assert session.server == "s2"
        s2.mode = "hang"
        await read_loop(session, 5)
        # The login named the dead s1 first; its alternative s3 was taken.
        assert farm.logins == [["s1"], ["s2"]]
        assert tried == ["s1", "s2", "s3"] and session.server == "s3"
        await session.close()

    asyncio.run(main())


def test_a_server_that_failed_lately_is_taken_when_the_farm_names_no_other():
    async def main():
        (s1, s2), farm = await farm_of("s1", "s2")
        tried: list[str] = []
        session = session_for(farm, connect=recording(tried))
        await session.start()
        s1.kill()
        await read_loop(session, 5)
        await s1.start()  # back, on its port
        s2.kill()
        await read_loop(session, 5)
        assert tried == ["s1", "s2", "s1"] and session.server == "s1"
        await session.close()

    asyncio.run(main())


def test_a_server_with_another_copy_is_never_used():
    async def main():
        (s1, s2), farm = await farm_of("s1", "s2")
        other = bytes(len(DATA))  # same size, other bytes: another sha256
        s2.description = identity(other)
        session = session_for(farm, give_up=1.5)
        await session.start()
        s1.kill()
        error, data = await session.handle(c.CMD_READ, 0, 0, 4096, None)
        assert (error, data) == (c.NBD_EIO, b"")  # waited, then gave up; never s2's bytes
        assert session.server is None
        # A description without the identity is refused the same way.
        s2.description = "vDisk golden (standard)"
        await s1.start()  # the first server returns: served again
        for _ in range(100):
            if session.server is not None:
                break
            await asyncio.sleep(0.1)
        error, data = await session.handle(c.CMD_READ, 0, 4096, 4096, None)
        assert error == 0 and data == DATA[4096:8192]
        assert session.server == "s1"
        await session.close()

    asyncio.run(main())


def test_a_login_naming_a_new_hash_of_the_same_version_is_followed():
    """A merge re-filed the kept version: same vDisk, version and size, a
    new sha256 in the login and in the new server's export."""

    async def main():
        (s1, s2), farm = await farm_of("s1", "s2")
        refiled = bytes(len(DATA))  # stands for the new file's hash
        s2.description = identity(refiled)
        session = session_for(farm, give_up=5)
        await session.start()
        farm.data = refiled  # logins now answer the new hash
        s1.kill()
        error, data = await session.handle(c.CMD_READ, 0, 0, 4096, None)
        assert error == 0 and data == DATA[:4096] and session.server == "s2"
        assert session.expected.sha256 == hashlib.sha256(refiled).hexdigest()
        await session.close()

    asyncio.run(main())


def test_requests_wait_for_a_server_to_return():
    async def main():
        (s1,), farm = await farm_of("s1")
        session = session_for(farm)
        await session.start()
        s1.kill()
        reader = asyncio.create_task(session.handle(c.CMD_READ, 0, 0, 4096, None))
        await asyncio.sleep(0.8)
        assert not reader.done()  # no server: the request waits, no error
        await s1.start()
        assert await reader == (0, DATA[:4096])
        await session.close()

    asyncio.run(main())


def test_a_move_order_hands_over_between_two_requests():
    """The server answers the probe ESHUTDOWN and serves the rest: the agent
    connects to the new server while reads go on, switches, and leaves the
    old one with NBD_CMD_DISC. No failover, no read sent again."""

    async def main():
        (s1, s2), farm = await farm_of("s1", "s2")
        session = session_for(farm, io_timeout=1.0)
        await session.start()

        async def reads_until_moved() -> int:
            count = 0
            while not session.moves or count < 50:  # then 50 more on the new server
                count = count + 1 if session.moves else 0
                await read_loop(session, 1, 4096)
            return count

        reads = [asyncio.create_task(reads_until_moved()) for _ in range(8)]
        await asyncio.sleep(0.1)
        farm.home = "s2"  # the farm moved the device
        s1.mode = "moving"
        await asyncio.wait_for(asyncio.gather(*reads), 30)
        assert session.server == "s2"
        assert session.failovers == []
        [move] = session.moves
        assert (move.from_server, move.to_server, move.retried) == ("s1", "s2", 0)
        print(f"move: switched {move.switch_ms} ms after the order showed")
        assert farm.logins[-1] == []  # the old server was not excluded
        for _ in range(100):  # the old connection is left, politely
            if s1.disconnects:
                break
            await asyncio.sleep(0.05)
        assert s1.disconnects == 1 and not s1.connections
        await read_loop(session, 20)
        await session.close()

    asyncio.run(main())


def test_a_server_that_answers_everything_eshutdown_is_left_for_the_login_answer():
    async def main():
        (s1, s2), farm = await farm_of("s1", "s2")
        session = session_for(farm)
        await session.start()
        farm.home = "s2"
        s1.mode = "shutdown"
        await read_loop(session, 20)
        assert session.server == "s2"
        assert session.failovers == []
        [move] = session.moves
        assert move.from_server == "s1" and move.to_server == "s2"
        assert farm.logins[-1] == []
        await session.close()

    asyncio.run(main())


def test_an_idle_device_leaves_a_hung_server_before_it_reads():
    async def main():
        (s1, s2), farm = await farm_of("s1", "s2")
        session = session_for(farm, io_timeout=0.3)
        await session.start()
        s1.mode = "hang"
        for _ in range(100):  # no request from the device: the probe finds it
            if session.server == "s2":
                break
            await asyncio.sleep(0.05)
        assert session.server == "s2"
        [record] = session.failovers
        assert "unanswered" in record.reason
        await read_loop(session, 5)
        await session.close()

    asyncio.run(main())


def test_without_failover_the_device_waits_for_its_own_server():
    async def main():
        (s1, s2), farm = await farm_of("s1", "s2", failover=False)
        session = session_for(farm)
        await session.start()
        error, _ = await session.handle(c.CMD_WRITE, 0, 0, 4, b"abcd")
        assert error == 0
        s1.kill()
        writer = asyncio.create_task(session.handle(c.CMD_WRITE, 0, 4, 4, b"efgh"))
        await asyncio.sleep(0.6)
        assert not writer.done() and farm.logins == []  # no login elsewhere, waits
        await s1.start()
        assert await writer == (0, b"")
        assert bytes(s1.data[:8]) == b"abcdefgh" and bytes(s2.data[:8]) == DATA[:8]
        assert session.server == "s1"
        await session.close()

    asyncio.run(main())


class DictCache:
    """A stand-in for the device cache (vdfarm.agent.cache): 4 KiB blocks in
    a dict, up to LIMIT blocks."""

    BLOCK = 4096

    def __init__(self, limit: int) -> None:
        self.blocks: dict[int, bytearray] = {}
        self.limit = limit

    def all_upstream(self, offset, length):
        first, last = offset // self.BLOCK, (offset + length - 1) // self.BLOCK
        return not any(b in self.blocks for b in range(first, last + 1))

    def needs_fill(self, offset, length):
        out = []
        for b in range(offset // self.BLOCK, (offset + length - 1) // self.BLOCK + 1):
            start, end = b * self.BLOCK, (b + 1) * self.BLOCK
            partial = offset > start or offset + length < end
            if partial and b not in self.blocks:
                out.append((start, self.BLOCK))
        return out

    def write(self, offset, data, fills):
        blocks = range(offset // self.BLOCK, (offset + len(data) - 1) // self.BLOCK + 1)
        if len(set(self.blocks) | set(blocks)) > self.limit:
            raise OSError(errno.ENOSPC, "full")
        for b in blocks:
            if b not in self.blocks:
                self.blocks[b] = bytearray(fills.get(b * self.BLOCK, bytes(self.BLOCK)))
            lo = max(offset, b * self.BLOCK)
            hi = min(offset + len(data), (b + 1) * self.BLOCK)
            self.blocks[b][lo - b * self.BLOCK : hi - b * self.BLOCK] = data[
                lo - offset : hi - offset
            ]

    def zero(self, offset, length, fills):
        self.write(offset, bytes(length), fills)

    def read_plan(self, offset, length):
        out, pos, end = [], offset, offset + length
        while pos < end:
            b = pos // self.BLOCK
            hi = min(end, (b + 1) * self.BLOCK)
            piece = self.blocks.get(b)
            data = (
                None if piece is None else bytes(piece[pos - b * self.BLOCK : hi - b * self.BLOCK])
            )
            out.append((pos, hi - pos, data))
            pos = hi
        return out

    def stats(self):
        return {
            "ram_bytes": len(self.blocks) * self.BLOCK,
            "disk_bytes": 0,
            "ram_hits": 0,
            "disk_hits": 0,
            "full": False,
        }


def test_writes_stay_in_the_device_cache_across_a_failover():
    async def main():
        (s1, s2), farm = await farm_of("s1", "s2", cache="device-ram")
        cache = DictCache(limit=4)
        session = session_for(farm, cache=cache)
        await session.start()
        assert session.transmission_flags & c.FLAG_CAN_MULTI_CONN
        assert await session.handle(c.CMD_WRITE, 0, 100, 5, b"hello") == (0, b"")
        assert await session.handle(c.CMD_FLUSH, 0, 0, 0, None) == (0, b"")
        s1.kill()
        error, data = await session.handle(c.CMD_READ, 0, 0, 8192, None)
        assert error == 0
        assert data == DATA[:100] + b"hello" + DATA[105:8192]
        assert s1.requests + s2.requests and bytes(s2.data) == DATA  # nothing written upstream
        # Full: ENOSPC on exactly the write that does not fit, earlier data intact.
        for block in range(1, 4):
            assert (await session.handle(c.CMD_WRITE, 0, block * 65536, 4096, b"x" * 4096))[0] == 0
        assert (await session.handle(c.CMD_WRITE, 0, 9 * 65536, 4096, b"y" * 4096))[
            0
        ] == c.NBD_ENOSPC
        assert session.cache_full and session.status()["cache_full"]
        error, data = await session.handle(c.CMD_READ, 0, 65536, 4096, None)
        assert (error, data) == (0, b"x" * 4096)
        await session.close()

    asyncio.run(main())
