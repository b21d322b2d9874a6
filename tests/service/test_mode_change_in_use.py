"""Hole 7: a vDisk's mode (or write-cache type) never changes under devices
that read it — a session on any server, or a login reservation on its way —
and a refusal changes nothing."""

from __future__ import annotations

import pytest

from tests.service.helpers import dump
from tests.service.multi import beat, duo_fixture  # noqa: F401 (fixture)
from vdfarm.service.errors import Conflict


def connect(farm, device):
    target = farm.exports.resolve(device)
    farm.sessions.started(target.device_id, target.vdisk_id, target.version)
    return target


def test_mode_change_refused_while_a_standard_device_streams(farm, raw_image):
    farm.vdisks.import_image("golden", raw_image)
    pc1 = farm.devices.add("pc1", vdisk="golden")
    connect(farm, "pc1")
    before = dump(farm)
    with pytest.raises(Conflict, match=r"mode of vDisk golden .* device pc1 on server"):
        farm.vdisks.set("golden", mode="private")
    with pytest.raises(Conflict, match="write-cache type of vDisk golden"):
        farm.vdisks.set("golden", write_cache="server-ram")
    assert dump(farm) == before
    assert farm.vdisks.set("golden", description="still fine").description == "still fine"
    farm.sessions.ended(pc1.id)
    assert farm.vdisks.set("golden", mode="private").access_mode == "private"


def test_mode_change_refused_while_a_device_streams_from_another_server(duo):
    a, b = duo["a"], duo["b"]
    a.devices.add("pc1", vdisk="w")
    connect(a, "pc1")
    with pytest.raises(Conflict, match="device pc1 on server a"):
        b.vdisks.set("w", mode="private")
    assert b.vdisks.show("w").access_mode == "standard"


def test_mode_change_refused_while_a_login_reservation_runs(farm, raw_image, clock):
    farm.vdisks.import_image("golden", raw_image)
    farm.devices.add("pc2", vdisk="golden")
    beat(farm)
    farm.logins.login("pc2")  # on its way: it will read the vDisk as it is now
    with pytest.raises(Conflict, match="device pc2 \\(logging in to server"):
        farm.vdisks.set("golden", mode="private")
    clock.advance(31)  # the reservation ran out: the device never came
    assert farm.vdisks.set("golden", mode="private").access_mode == "private"
