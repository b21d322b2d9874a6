"""Device service: add, list, show, assign, set, delete — and refusals that
change nothing."""

from __future__ import annotations

import pytest

from tests.service.helpers import dump
from vdfarm.service.errors import Conflict, Invalid, NotFound
from vdfarm.service.validation import normalise_mac, parse_mac


@pytest.fixture
def vdisk(farm, raw_image):
    return farm.vdisks.import_image("w", raw_image)


@pytest.mark.parametrize(
    "text",
    [
        "aa:bb:cc:dd:ee:0f",
        "AA:BB:CC:DD:EE:0F",
        "AA-BB-CC-DD-EE-0F",
        "aabbccddee0f",
        "AABB.CCDD.EE0F",
        " aa:bb:cc:dd:ee:0f ",
    ],
)
def test_mac_forms(text):
    assert normalise_mac(text) == "aa:bb:cc:dd:ee:0f"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:ff:00",
        "aa:bb-cc:dd:ee:ff",
        "gg:bb:cc:dd:ee:ff",
        "aabbccddeeff0",
        "pc1",
    ],
)
def test_not_macs(text):
    assert parse_mac(text) is None
    with pytest.raises(Invalid, match="invalid MAC address"):
        normalise_mac(text)


def test_add_and_show(farm, vdisk, clock):
    info = farm.devices.add(
        "pc1", mac="AA-BB-CC-DD-EE-01", vdisk="w", device_type="test", description="lab"
    )
    assert (info.name, info.mac, info.vdisk, info.device_type, info.description) == (
        "pc1",
        "aa:bb:cc:dd:ee:01",
        "w",
        "test",
        "lab",
    )
    assert info.created_at == clock.now
    assert farm.devices.show("pc1") == info
    assert farm.devices.show("aabbccddee01") == info
    assert farm.vdisks.show("w").devices == ("pc1",)
    assert farm.devices.add("bare").vdisk is None
    assert [d.name for d in farm.devices.list()] == ["bare", "pc1"]
    [entry] = [e for e in farm.audit.list() if e.target_name == "pc1"]
    assert entry.action == "device.add" and entry.after["mac"] == "aa:bb:cc:dd:ee:01"


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"name": "bad name"}, Invalid, "invalid device name"),
        ({"mac": "zz"}, Invalid, "invalid MAC"),
        ({"mac": "AA:BB:CC:DD:EE:01"}, Conflict, "already used by device pc1"),
        ({"name": "pc1"}, Conflict, "device pc1 already exists"),
        ({"vdisk": "nope"}, NotFound, "no vDisk named nope"),
        ({"device_type": "lab"}, Invalid, "invalid device type"),
    ],
)
def test_add_refusals_change_nothing(farm, vdisk, kwargs, error, text):
    farm.devices.add("pc1", mac="aa:bb:cc:dd:ee:01")
    before = dump(farm)
    args = {"name": "pc2"} | kwargs
    with pytest.raises(error, match=text):
        farm.devices.add(args.pop("name"), **args)
    assert dump(farm) == before


def test_assign_and_unassign(farm, vdisk, raw_image):
    farm.vdisks.import_image("other", raw_image)
    farm.devices.add("pc1", vdisk="w")
    assert farm.devices.assign("pc1", "other").vdisk == "other"
    assert farm.devices.assign("pc1", None).vdisk is None
    entries = [e for e in farm.audit.list() if e.action == "device.assign"]
    changes = [(e.before["vdisk"], e.after["vdisk"]) for e in entries]
    assert changes == [("w", "other"), ("other", None)]


def test_assign_refusals_change_nothing(farm, vdisk):
    farm.devices.add("pc1", vdisk="w")
    before = dump(farm)
    with pytest.raises(NotFound, match="no vDisk named nope"):
        farm.devices.assign("pc1", "nope")
    with pytest.raises(NotFound, match="no device named ghost"):
        farm.devices.assign("ghost", "w")
    assert dump(farm) == before


def test_set(farm, vdisk):
    farm.devices.add("pc1", mac="aa:bb:cc:dd:ee:01")
    info = farm.devices.set(
        "pc1", device_type="maintenance", mac="AABBCCDDEE02", description="moved"
    )
    assert (info.device_type, info.mac) == ("maintenance", "aa:bb:cc:dd:ee:02")
    assert info.description == "moved"
    assert farm.devices.set("pc1", mac=None).mac is None
    assert farm.devices.set("pc1", mac="aa:bb:cc:dd:ee:02").mac == "aa:bb:cc:dd:ee:02"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, Invalid),
        ({"device_type": "lab"}, Invalid),
        ({"mac": "nope"}, Invalid),
        ({"mac": "aa:bb:cc:dd:ee:09"}, Conflict),
    ],
)
def test_set_refusals_change_nothing(farm, kwargs, error):
    farm.devices.add("pc1", mac="aa:bb:cc:dd:ee:01")
    farm.devices.add("pc9", mac="aa:bb:cc:dd:ee:09")
    before = dump(farm)
    with pytest.raises(error):
        farm.devices.set("pc1", **kwargs)
    assert dump(farm) == before


def test_delete(farm, vdisk):
    farm.devices.add("pc1", vdisk="w")
    assert farm.devices.delete("pc1").name == "pc1"
    assert farm.devices.list() == []
    assert farm.vdisks.show("w").devices == ()
    with pytest.raises(NotFound):
        farm.devices.delete("pc1")


def test_delete_refused_while_holding_a_lock(farm, vdisk, clock):
    dev = farm.devices.add("pc1", vdisk="w")
    grant = farm.locks.acquire(vdisk.id, dev.id, 10)
    before = dump(farm)
    with pytest.raises(Conflict, match="holds the lock of vDisk w"):
        farm.devices.delete("pc1")
    assert dump(farm) == before
    clock.advance(11)
    farm.devices.delete("pc1")
    assert not farm.locks.is_current(vdisk.id, grant.token)
    assert farm.locks.list()[0].state == "free"
