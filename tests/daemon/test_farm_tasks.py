"""The farm tasks' starts, in one process on SQLite: the sessions of the
last run end before the NBD listener opens, never after (a device that
connected at once would lose its record)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.service.helpers import make_raw
from vdfarm.daemon import farm_tasks, run, stream_tasks
from vdfarm.daemon.parts import ServerOptions
from vdfarm.service.context import Farm


@pytest.fixture
def farm(tmp_path) -> Iterator[Farm]:
    farm = Farm.init(tmp_path / "d", server_name="s1")
    farm.vdisks.import_image("golden", make_raw(tmp_path / "g.raw"))
    farm.devices.add("pc1", vdisk="golden")
    farm.servers.register(10809, None, "127.0.0.1", False)
    yield farm
    farm.close()


def record_session(farm: Farm) -> None:
    device = farm.devices.show("pc1")
    vdisk_id = farm.vdisks.show("golden").id
    farm.sessions.started(device.id, vdisk_id, 0, "127.0.0.1")


def test_the_store_task_ends_the_last_runs_sessions_before_the_listener(farm):
    record_session(farm)  # what the last run left
    parts = run.build_parts(farm, ServerOptions(nbd_port=0, api_port=None))
    order = [make.__name__ for make in run.TASKS]
    assert order.index("local_store") < order.index("nbd_listener")
    asyncio.run(farm_tasks.LocalStore(parts).start())
    assert farm.devices.show("pc1").session is None


def test_the_heartbeats_start_keeps_a_session_recorded_after_the_listener(farm):
    async def main() -> None:
        parts = run.build_parts(farm, ServerOptions(nbd_port=0, api_port=None))
        listener = stream_tasks.NbdListener(parts)
        await listener.start()
        try:
            record_session(farm)  # a device connected as soon as the port opened
            await farm_tasks.Heartbeat(parts).start()
        finally:
            await listener.stop()

    asyncio.run(main())
    live = farm.devices.show("pc1").session
    assert live is not None and live["vdisk"] == "golden"
