"""Carrying out a move order, in one process. The handover window: every
request is served, CACHE (the agent's probe) gets ESHUTDOWN, and a client
that leaves by itself ends the session at once. After the window: the
device's connection is closed only after its in-flight requests are
answered, a request that arrives meanwhile gets ESHUTDOWN; a device that
wrote to its write cache meanwhile stays, and the order is cancelled."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from tests.service.helpers import make_raw
from tests.stream.rawclient import CMD_CACHE, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE, RawClient
from vdfarm.daemon.farm_port import ServiceFarmPort
from vdfarm.service.context import Farm
from vdfarm.stream.moves import order_is_stale
from vdfarm.stream.port import MoveOrder
from vdfarm.stream.server import StreamServer

ESHUTDOWN = 108


@pytest.fixture(scope="session")
def db_kind() -> str:
    """In-process, on SQLite only (the database is not what is tested here)."""
    return "sqlite"


def test_order_is_stale():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    order = MoveOrder(1, "pc1", "s2", now - timedelta(seconds=31))
    assert order_is_stale(order, now, 30)
    assert not order_is_stale(order, now, 60)
    assert order_is_stale(MoveOrder(1, "pc1", order.to_server, None), now, 60)


def test_a_moved_device_is_closed_after_its_in_flight_flush(tmp_path):
    farm = Farm.init(tmp_path / "d", server_name="s1")
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw"))
    farm.devices.add("pc1", vdisk="w")
    device_id = farm.exports.resolve("pc1").device_id
    release_flush = threading.Event()

    async def scenario():
        server = StreamServer(
            ServiceFarmPort(farm), farm.cache_dir, grace_seconds=30, handover_seconds=0
        )  # no handover window: the connection is closed at once
        port = await server.start("127.0.0.1", 0)
        try:
            client = RawClient(port)
            await asyncio.to_thread(client.connect, "pc1")
            session = server.registry.sessions[device_id]
            real_flush = session.stack.flush

            def slow_flush():
                release_flush.wait(10)
                real_flush()

            session.stack.flush = slow_flush
            flush_cookie = client.request(CMD_FLUSH, 0, 0)
            await asyncio.sleep(0.2)  # the flush is in flight
            assert server.registry.move_out(device_id, "s2") is None
            read_cookie = client.request(CMD_READ, 0, 4096)
            first = await asyncio.to_thread(client.reply)
            assert first[:2] == (ESHUTDOWN, read_cookie)  # arrived after the order
            release_flush.set()
            second = await asyncio.to_thread(client.reply)
            assert second[:2] == (0, flush_cookie)  # in flight: answered
            assert await asyncio.to_thread(client.is_closed_by_server, 5)
            await asyncio.sleep(0.2)
            assert device_id not in server.registry.sessions  # ended at once, no grace
            assert server.registry.move_out(device_id, "s2") == ("it has no session on this server")
        finally:
            release_flush.set()
            await server.stop()

    try:
        asyncio.run(scenario())
    finally:
        farm.close()


def moving_farm(tmp_path):
    farm = Farm.init(tmp_path / "d", server_name="s1")
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw"))
    farm.devices.add("pc1", vdisk="w")
    return farm, farm.exports.resolve("pc1").device_id


def test_during_the_handover_requests_are_served_and_only_the_probe_is_told(tmp_path):
    farm, device_id = moving_farm(tmp_path)

    async def scenario():
        server = StreamServer(
            ServiceFarmPort(farm), farm.cache_dir, grace_seconds=30, handover_seconds=30
        )
        port = await server.start("127.0.0.1", 0)
        try:
            client = RawClient(port)
            await asyncio.to_thread(client.connect, "pc1")
            assert (await asyncio.to_thread(client.call, CMD_CACHE, 0, 4096))[0] == 0
            assert server.registry.move_out(device_id, "s2") is None
            assert server.registry.move_out(device_id, "s2") is None  # polled again: under way
            error, data = await asyncio.to_thread(client.call, CMD_READ, 0, 4096)
            assert error == 0 and len(data) == 4096
            assert (await asyncio.to_thread(client.call, CMD_CACHE, 0, 4096))[0] == ESHUTDOWN
            assert (await asyncio.to_thread(client.call, CMD_READ, 4096, 4096))[0] == 0
            client.request(CMD_DISC, 0, 0)  # the client leaves by itself
            assert await asyncio.to_thread(client.is_closed_by_server, 5)
            await asyncio.sleep(0.2)
            assert device_id not in server.registry.sessions  # ended at once, no grace
        finally:
            await server.stop()

    try:
        asyncio.run(scenario())
    finally:
        farm.close()


def test_after_the_handover_a_device_that_stayed_is_closed_unless_it_wrote(tmp_path):
    farm, device_id = moving_farm(tmp_path)

    async def scenario():
        server = StreamServer(
            ServiceFarmPort(farm), farm.cache_dir, grace_seconds=30, handover_seconds=0.5
        )
        port = await server.start("127.0.0.1", 0)
        try:
            quiet, writer = RawClient(port), RawClient(port)
            await asyncio.to_thread(quiet.connect, "pc1")
            assert server.registry.move_out(device_id, "s2") is None
            assert await asyncio.to_thread(quiet.is_closed_by_server, 10)  # the window ended
            await asyncio.sleep(0.2)
            assert device_id not in server.registry.sessions

            await asyncio.to_thread(writer.connect, "pc1")
            assert server.registry.move_out(device_id, "s2") is None
            error, _ = await asyncio.to_thread(writer.call, CMD_WRITE, 0, 4096, 0, b"x" * 4096)
            assert error == 0  # written to its write cache here, during the window
            await asyncio.sleep(1.0)  # the window ended: pinned, it stays
            assert not await asyncio.to_thread(writer.is_closed_by_server, 0.2)
            assert (await asyncio.to_thread(writer.call, CMD_CACHE, 0, 4096))[0] == 0
            error, data = await asyncio.to_thread(writer.call, CMD_READ, 0, 4096)
            assert error == 0 and data == b"x" * 4096
            assert server.registry.sessions[device_id].moving_to is None
        finally:
            await server.stop()

    try:
        asyncio.run(scenario())
    finally:
        farm.close()
