"""Device sessions: the stream's seam — start, refresh, end, list, and what
they hold on to."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from tests.service.helpers import dump, make_raw
from vdfarm.farm.models import DeviceSession, Server
from vdfarm.service.errors import NotFound
from vdfarm.service.sessions import LiveSession, _Reader, may_read
from vdfarm.store.manifest import RetiredFile


@pytest.fixture
def sfarm(farm, tmp_path):
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw"))
    farm.devices.add("pc1", vdisk="w")
    farm.devices.add("pc2", vdisk="w")
    return farm


def ids(farm, device="pc1"):
    target = farm.exports.resolve(device)
    return target.device_id, target.vdisk_id


def test_start_list_seen_end(sfarm, clock):
    device_id, vdisk_id = ids(sfarm)
    sfarm.sessions.started(device_id, vdisk_id, 0)
    [info] = sfarm.sessions.list()
    assert (info.device, info.server, info.vdisk, info.version) == (
        "pc1",
        sfarm.server_name,
        "w",
        0,
    )
    assert info.connected_at == info.last_seen == clock.now
    clock.advance(5)
    assert sfarm.sessions.seen(device_id) is True
    [info] = sfarm.sessions.list()
    assert info.last_seen == clock.now and info.connected_at < info.last_seen
    assert sfarm.versions.list("w")[0].devices == ("pc1",)
    sfarm.sessions.ended(device_id)
    assert sfarm.sessions.list() == []
    assert sfarm.sessions.seen(device_id) is False
    sfarm.sessions.ended(device_id)  # no-op


def test_a_reconnect_replaces_the_old_session(sfarm, clock):
    device_id, vdisk_id = ids(sfarm)
    sfarm.sessions.started(device_id, vdisk_id, 0)
    clock.advance(3)
    sfarm.sessions.started(device_id, vdisk_id, 0)
    [info] = sfarm.sessions.list()
    assert info.connected_at == clock.now


def test_end_leaves_another_servers_session_alone(sfarm, clock):
    device_id, vdisk_id = ids(sfarm)
    sfarm.sessions.started(device_id, vdisk_id, 0)
    with sfarm.session() as session:  # the device moved to server srv2 meanwhile
        other = Server(
            uuid="0" * 36,
            name="srv2",
            hostname="h2",
            store_path="/s",
            version="0",
            created_at=clock.now,
        )
        session.add(other)
        session.flush()
        session.execute(
            update(DeviceSession)
            .values(server_id=other.id)
            .execution_options(synchronize_session=False)
        )
    before = dump(sfarm)
    sfarm.sessions.ended(device_id)
    assert sfarm.sessions.seen(device_id) is False
    assert dump(sfarm) == before


@pytest.mark.parametrize(
    "args, text",
    [
        ((999, None, 0), "no device with id 999"),
        ((None, 999, 0), "no vDisk with id 999"),
        ((None, None, 7), "vDisk w has no version 7"),
    ],
)
def test_start_refusals_change_nothing(sfarm, args, text):
    device_id, vdisk_id = ids(sfarm)
    given = (args[0] or device_id, args[1] or vdisk_id, args[2])
    before = dump(sfarm)
    with pytest.raises(NotFound, match=text):
        sfarm.sessions.started(*given)
    assert dump(sfarm) == before


def test_deleting_a_device_or_vdisk_drops_its_sessions(sfarm):
    for device in ("pc1", "pc2"):
        sfarm.sessions.started(*ids(sfarm, device), 0)
    sfarm.devices.delete("pc1")
    assert [s.device for s in sfarm.sessions.list()] == ["pc2"]
    sfarm.devices.assign("pc2", None)
    sfarm.vdisks.delete("w")
    assert sfarm.sessions.list() == []


@pytest.mark.parametrize(
    "retired_version, reader_version, reader_offset, expected",
    [
        (1, 3, -1, True),  # booted before the merge, through the retired file
        (1, 3, 0, True),  # same instant: kept (conservative)
        (1, 3, +1, False),  # booted the merged chain
        (2, 1, -1, False),  # its chain never included version 2's file
        (None, 0, -1, True),  # unknown version: any earlier reader keeps it
    ],
)
def test_may_read(clock, retired_version, reader_version, reader_offset, expected):
    retired = RetiredFile("vX.qcow2", retired_version, clock.now)
    clock.advance(reader_offset)
    assert may_read(retired, _Reader(reader_version, clock.now)) is expected


def test_end_all_forgets_this_servers_sessions(sfarm):
    for device in ("pc1", "pc2"):
        sfarm.sessions.started(*ids(sfarm, device), 0)
    assert sfarm.sessions.end_all() == 2
    assert sfarm.sessions.list() == []
    assert sfarm.sessions.end_all() == 0


def test_start_records_the_client_address(sfarm):
    device_id, vdisk_id = ids(sfarm)
    sfarm.sessions.started(device_id, vdisk_id, 0, "10.1.2.3")
    with sfarm.session() as session:
        assert session.get(DeviceSession, 1).client_ip == "10.1.2.3"


def other_server(sfarm, clock, name="srv2"):
    with sfarm.session() as session:
        other = Server(
            uuid=f"{len(name):036}",
            name=name,
            hostname="h2",
            store_path="/s",
            version="0",
            created_at=clock.now,
        )
        session.add(other)
        session.flush()
        return other.id


def rows(sfarm):
    with sfarm.session() as session:
        return sorted(
            (r.device_id, r.server_id, r.version, r.client_ip)
            for r in session.scalars(select(DeviceSession))
        )


def test_reconcile_makes_this_servers_rows_match_what_it_serves(sfarm, clock):
    pc1, w = ids(sfarm, "pc1")
    pc2, _ = ids(sfarm, "pc2")
    sfarm.devices.add("pc3", vdisk="w")
    pc3, _ = ids(sfarm, "pc3")
    me = sfarm.server_id
    sfarm.sessions.started(pc1, w, 0)  # recorded, then dropped while the DB was away
    elsewhere = other_server(sfarm, clock)
    with sfarm.session() as session:  # pc3 connected to srv2 later
        session.add(
            DeviceSession(
                device_id=pc3,
                server_id=elsewhere,
                vdisk_id=w,
                version=0,
                connected_at=clock.now,
                last_seen=clock.now,
            )
        )
    live = {
        pc2: LiveSession(w, 0, "10.0.0.2"),
        pc3: LiveSession(w, 0),
        999: LiveSession(w, 0),
    }  # 999: deleted meanwhile
    assert sfarm.sessions.reconcile(live) == (1, 1)
    assert rows(sfarm) == [(pc2, me, 0, "10.0.0.2"), (pc3, elsewhere, 0, None)]
    assert sfarm.sessions.reconcile(live) == (0, 0)  # converged: nothing more to do


def test_reconcile_with_nothing_live_ends_this_servers_sessions(sfarm, clock):
    for device in ("pc1", "pc2"):
        sfarm.sessions.started(*ids(sfarm, device), 0)
    assert sfarm.sessions.reconcile({}) == (0, 2)
    assert rows(sfarm) == []
