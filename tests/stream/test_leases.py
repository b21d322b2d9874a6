"""Lease renewals run on their own thread: a database thread stuck on other
work (a slow session record, an export lookup) never lets a private-mode
device's lease run out. In one process, on SQLite."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.service.helpers import make_raw
from tests.stream.rawclient import RawClient
from vdfarm.daemon.farm_port import ServiceFarmPort
from vdfarm.service.context import Farm
from vdfarm.stream.server import StreamServer


@pytest.fixture(scope="session")
def db_kind() -> str:
    """In-process, on SQLite only (the threads are what is tested here)."""
    return "sqlite"


def test_a_stuck_database_thread_never_delays_a_lease_renewal(tmp_path):
    farm = Farm.init(tmp_path / "d", server_name="s1")
    farm.vdisks.import_image("p", make_raw(tmp_path / "p.raw"), mode="private")
    farm.devices.add("solo", vdisk="p")
    stuck = threading.Event()

    def lease_end():
        return farm.locks.list()[0].lease_expires_at

    async def scenario():
        server = StreamServer(
            ServiceFarmPort(farm), farm.cache_dir, grace_seconds=30, lease_seconds=1.5
        )
        port = await server.start("127.0.0.1", 0)
        try:
            client = RawClient(port)
            await asyncio.to_thread(client.connect, "solo")
            first = await asyncio.to_thread(lease_end)
            server.db_executor.submit(stuck.wait, 30)  # the database thread is busy
            for _ in range(200):  # renewals every 0.5 s: wait for one, at most 20 s
                await asyncio.sleep(0.1)
                if await asyncio.to_thread(lease_end) > first:
                    break
            assert await asyncio.to_thread(lease_end) > first, "no renewal while busy"
            assert not stuck.is_set()  # ... and the database thread was still stuck
        finally:
            stuck.set()
            await server.stop()

    try:
        asyncio.run(scenario())
    finally:
        farm.close()
