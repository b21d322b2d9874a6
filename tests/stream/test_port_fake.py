"""The stream's farm-facing behaviour, fast: a real StreamServer on a
loopback socket, a raw NBD client, and the in-memory farm of fake_port.py
behind the port (no server process, no database).

Move orders, lease renewal refused (fencing), the database away (serving
from what is known, records skipped, then reconciled) and the NBD error
each port error becomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.stream.fake_port import FakeFarm, target
from tests.stream.rawclient import (
    CMD_DISC,
    CMD_FLUSH,
    CMD_READ,
    CMD_WRITE,
    EPERM,
    REP_ERR_POLICY,
    REP_ERR_UNKNOWN,
    NBDOptionError,
    RawClient,
)
from vdfarm.nbd.limits import ConnectionLimits
from vdfarm.nbd.tls_config import TLSSettings
from vdfarm.stream.farm_link import reconcile_after_outage_forever
from vdfarm.stream.moves import carry_out_moves
from vdfarm.stream.port import LiveSession
from vdfarm.stream.server import StreamServer

ESHUTDOWN = 108
SIZE = 1 << 20


@pytest.fixture(scope="session")
def db_kind() -> str:
    """No database at all: the farm is in memory."""
    return "none"


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "golden.raw"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def fake(tmp_path, image) -> FakeFarm:
    """pc1, pc2: standard on golden; solo: private on its own file; pc4:
    standard on golden with a device-side cache and a sealed hash."""
    private = tmp_path / "mine.raw"
    private.write_bytes(image.read_bytes())
    return FakeFarm(
        target(1, "pc1", image),
        target(2, "pc2", image),
        target(3, "solo", private, mode="private", vdisk_id=2, vdisk="mine"),
        target(4, "pc4", image, sha256="ab" * 32, cache="device-ram"),
    )


@contextlib.asynccontextmanager
async def serving(
    farm: FakeFarm,
    tmp_path: Path,
    grace: float = 30,
    lease: float = 30,
    limits: ConnectionLimits | None = None,
    tls: TLSSettings | None = None,
    handover: float = 5,
) -> AsyncIterator[tuple[StreamServer, int]]:
    server = StreamServer(
        farm,
        tmp_path / "cache",
        grace_seconds=grace,
        lease_seconds=lease,
        limits=limits,
        tls=tls,
        handover_seconds=handover,
    )
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop()


async def connect(port: int, name: str) -> RawClient:
    client = RawClient(port)
    await asyncio.to_thread(client.connect, name)
    return client


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def goodbye(client: RawClient) -> None:
    """A clean disconnect (NBD_CMD_DISC): the session ends at once."""
    client.request(CMD_DISC, 0, 0)
    await asyncio.to_thread(client.is_closed_by_server, 5)
    client.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


# -- move orders --------------------------------------------------------------


def test_a_move_order_answers_in_flight_requests_then_closes_without_grace(fake, tmp_path):
    release_flush = threading.Event()

    async def scenario() -> None:
        # No handover window: the close step at once (tests/stream/test_moves.py
        # has the window).
        async with serving(fake, tmp_path, handover=0) as (server, port):
            client = await connect(port, "pc1")
            session = server.registry.sessions[1]
            real_flush = session.stack.flush

            def slow_flush() -> None:
                release_flush.wait(10)
                real_flush()

            session.stack.flush = slow_flush
            flush_cookie = client.request(CMD_FLUSH, 0, 0)
            await asyncio.sleep(0.1)  # the flush is in flight
            fake.order_move("pc1", "s2")
            assert await carry_out_moves(server.registry) == 1
            read_cookie = client.request(CMD_READ, 0, 4096)
            assert (await asyncio.to_thread(client.reply))[:2] == (ESHUTDOWN, read_cookie)
            release_flush.set()
            assert (await asyncio.to_thread(client.reply))[:2] == (0, flush_cookie)
            assert await asyncio.to_thread(client.is_closed_by_server, 5)
            await eventually(lambda: 1 not in server.registry.sessions, "session ended")
            # No grace, and its record stays (with the order) for its next login.
            assert 1 in fake.records and "session_ended" not in fake.calls
            assert fake.cancelled == []

    try:
        run(scenario)
    finally:
        release_flush.set()


def test_a_pinned_device_stays_and_its_order_is_cancelled(fake, tmp_path):
    async def scenario() -> None:
        async with serving(fake, tmp_path) as (server, port):
            solo = await connect(port, "solo")  # writes its vDisk: pinned
            pc2 = await connect(port, "pc2")
            assert (await asyncio.to_thread(pc2.call, CMD_WRITE, 0, 512, 0, b"x" * 512))[0] == 0
            fake.order_move("solo", "s2")
            fake.order_move("pc2", "s2")  # data in its write cache here: pinned
            assert await carry_out_moves(server.registry) == 0
            assert sorted(fake.cancelled) == [2, 3] and fake.orders == {}
            for client in (solo, pc2):  # both keep streaming
                assert (await asyncio.to_thread(client.call, CMD_READ, 0, 512))[0] == 0
            assert {2, 3} <= set(server.registry.sessions)

    run(scenario)


def test_an_order_for_a_device_that_never_came_is_dropped_once_stale(fake, tmp_path):
    async def scenario() -> None:
        async with serving(fake, tmp_path) as (server, _port):
            fake.records[1] = LiveSession(1, 0)
            fake.order_move("pc1", "s2", age_seconds=5)
            assert await carry_out_moves(server.registry, stale_after=30) == 0
            assert 1 in fake.orders  # young: the device may still be on its way
            fake.order_move("pc1", "s2", age_seconds=31)
            await carry_out_moves(server.registry, stale_after=30)
            assert fake.orders == {} and 1 not in fake.records

    run(scenario)


# -- leases -------------------------------------------------------------------


def test_a_refused_renewal_fences_the_session_and_writes_get_eperm(fake, tmp_path):
    async def scenario() -> None:
        async with serving(fake, tmp_path, lease=0.3) as (server, port):
            solo = await connect(port, "solo")
            before = b"a" * 512
            assert (await asyncio.to_thread(solo.call, CMD_WRITE, 0, 512, 0, before))[0] == 0
            await asyncio.sleep(0.3)  # renewals go through meanwhile
            assert not server.registry.sessions[3].fenced
            fake.refuse_renewals = True  # another holder took the lock over
            await eventually(lambda: server.registry.sessions[3].fenced, "fenced")
            assert (await asyncio.to_thread(solo.call, CMD_WRITE, 0, 512, 0, b"b" * 512))[
                0
            ] == EPERM
            assert await asyncio.to_thread(solo.call, CMD_READ, 0, 512) == (0, before)
            await goodbye(solo)
            await eventually(lambda: 3 not in server.registry.sessions, "session ended")
        assert fake.released == []  # a fenced holder releases nothing: not its lock

    run(scenario)


def test_a_renewal_that_fails_keeps_streaming_and_is_tried_again(fake, tmp_path):
    async def scenario() -> None:
        async with serving(fake, tmp_path, lease=0.3) as (server, port):
            solo = await connect(port, "solo")
            fake.available = False  # renewals raise FarmUnavailable
            await asyncio.sleep(0.4)
            assert not server.registry.sessions[3].fenced
            assert (await asyncio.to_thread(solo.call, CMD_WRITE, 0, 512, 0, b"c" * 512))[0] == 0
            fake.available = True
            renewals = fake.calls.count("renew_lock")
            await eventually(lambda: fake.calls.count("renew_lock") > renewals, "renewed")

    run(scenario)


# -- the database away ----------------------------------------------------------


def test_database_away_a_known_device_is_served_from_cache_and_records_are_reconciled(
    fake, tmp_path
):
    async def scenario() -> None:
        async with serving(fake, tmp_path) as (server, port):
            registry = server.registry
            first = await connect(port, "pc1")  # known from now on
            await goodbye(first)
            await eventually(lambda: 1 not in registry.sessions, "first session ended")

            fake.available = False  # resolve raises FarmUnavailable
            again = await connect(port, "pc1")
            assert (await asyncio.to_thread(again.call, CMD_READ, 0, 4096))[0] == 0
            assert registry.dirty  # its record failed

            registry.set_farm_reachable(False)  # the heartbeat found it away
            tried = len(fake.calls)
            second = await connect(port, "pc1")  # a second connection
            for client in (again, second):
                await goodbye(client)
            await eventually(lambda: 1 not in registry.sessions, "session ended while away")
            third = await connect(port, "pc1")  # a new session, no record tried
            assert len(fake.calls) == tried  # nothing waited on the database
            with pytest.raises(NBDOptionError) as unknown:
                await connect(port, "pc2")  # never resolved here: cannot be served
            assert unknown.value.rtype == REP_ERR_UNKNOWN
            assert "database" in unknown.value.message

            fake.available = True
            registry.set_farm_reachable(True)
            loop = asyncio.get_running_loop()
            reconciling = loop.create_task(reconcile_after_outage_forever(registry))
            try:
                await eventually(lambda: not registry.dirty, "records reconciled")
            finally:
                reconciling.cancel()
            assert fake.reconciled[-1] == {1: LiveSession(1, 0, "127.0.0.1")}
            assert fake.records == {1: LiveSession(1, 0, "127.0.0.1")}
            third.close()

    run(scenario)


def test_a_known_device_whose_copy_left_the_store_is_refused_not_cached(fake, tmp_path):
    """Another copy (or none) where the device's version was: the database
    says so, and what the server knew of the device must not stand in (it
    would serve whatever file now has the old name, under the sealed hash)."""

    async def scenario() -> None:
        async with serving(fake, tmp_path) as (server, port):
            first = await connect(port, "pc4")  # known from now on
            await goodbye(first)
            await eventually(lambda: 4 not in server.registry.sessions, "session ended")

            fake.not_here.add("pc4")
            with pytest.raises(NBDOptionError) as refused:
                await connect(port, "pc4")
            assert refused.value.rtype == REP_ERR_UNKNOWN
            not_here = "version 0 of vDisk golden is not in this server's store"
            assert refused.value.message == not_here

            fake.available = False  # and then the database goes away: still nothing known
            with pytest.raises(NBDOptionError) as unknown:
                await connect(port, "pc4")
            assert "database" in unknown.value.message

    run(scenario)


# -- port errors on the wire ------------------------------------------------------


@pytest.mark.parametrize(
    ("export", "rtype", "message"),
    [
        ("nobody", REP_ERR_UNKNOWN, "no device named nobody"),
        ("vdisk/nothing", REP_ERR_UNKNOWN, "no vDisk named nothing"),
    ],
)
def test_an_unknown_export_is_refused_with_the_farms_line(fake, tmp_path, export, rtype, message):
    async def scenario() -> None:
        async with serving(fake, tmp_path) as (_server, port):
            with pytest.raises(NBDOptionError) as refused:
                await connect(port, export)
            assert (refused.value.rtype, refused.value.message) == (rtype, message)

    run(scenario)


def test_a_vdisk_locked_elsewhere_is_refused_by_policy(fake, tmp_path):
    fake.locks[2] = (99, 7)  # another device holds mine's lock

    async def scenario() -> None:
        async with serving(fake, tmp_path) as (_server, port):
            with pytest.raises(NBDOptionError) as refused:
                await connect(port, "solo")
            assert refused.value.rtype == REP_ERR_POLICY
            assert refused.value.message == "vDisk 2 is locked by device 99"

    run(scenario)


# -- the export's description: what the agent checks after a failover ---------


@pytest.mark.parametrize(
    ("export", "expected"),
    [
        ("pc4", f"vdfarm vdisk=golden version=0 sha256={'ab' * 32} size={SIZE}"),
        ("solo", f"vdfarm vdisk=mine version=0 sha256=- size={SIZE}"),
        ("vdisk/golden", f"vdfarm vdisk=golden version=0 sha256=- size={SIZE}"),
    ],
)
def test_an_opened_export_describes_the_copy_it_serves(fake, tmp_path, export, expected):
    async def scenario() -> None:
        async with serving(fake, tmp_path) as (_server, port):
            client = RawClient(port)
            await asyncio.to_thread(client.greeting)
            client.send_client_flags()
            assert await asyncio.to_thread(client.description, export) == expected
            client.close()

    run(scenario)


def test_a_device_back_within_grace_is_recorded_here_again(fake, tmp_path):
    """Its agent failed over to another server (whose record replaced this
    one's) and came back before the grace ran out: the record says here."""

    async def scenario() -> None:
        async with serving(fake, tmp_path) as (server, port):
            client = await connect(port, "pc1")
            await eventually(lambda: 1 in fake.records, "pc1 recorded")
            client.close()  # an unclean drop: the session waits out its grace
            await eventually(lambda: server.registry.sessions[1].grace_handle is not None, "grace")
            del fake.records[1]  # another server recorded pc1 meanwhile
            again = await connect(port, "pc1")
            await eventually(lambda: 1 in fake.records, "pc1 recorded again")
            assert fake.calls.count("session_started") == 2
            await goodbye(again)

    run(scenario)
