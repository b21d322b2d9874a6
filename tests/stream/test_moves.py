"""Carrying out a move order, in one process: the device's connection is
closed only after its in-flight requests are answered, and a request that
arrives meanwhile gets ESHUTDOWN."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from tests.service.helpers import make_raw
from tests.stream.rawclient import CMD_FLUSH, CMD_READ, RawClient
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
        server = StreamServer(ServiceFarmPort(farm), farm.cache_dir, grace_seconds=30)
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
