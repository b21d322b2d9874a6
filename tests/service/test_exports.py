"""resolve_export: device name or MAC → what to serve, and its three refusals."""

from __future__ import annotations

import dataclasses

import pytest

from vdfarm.service.errors import Invalid, NotFound, NotInStore, Unavailable


@pytest.fixture
def setup(farm, raw_image):
    farm.vdisks.import_image(
        "w",
        raw_image,
        mode="private",
        write_cache="device-ram",
        cache_limit_mb=3,
        description="golden image",
    )
    farm.devices.add("pc1", mac="aa:bb:cc:dd:ee:01", vdisk="w", device_type="test")
    return farm


@pytest.mark.parametrize(
    "export",
    [
        "pc1",
        "aa:bb:cc:dd:ee:01",
        "AA-BB-CC-DD-EE-01",
        "aabbccddee01",
        "AABBCCDDEE01",
    ],
)
def test_resolve_by_name_or_mac(setup, export):
    target = setup.exports.resolve(export)
    vdisk = setup.vdisks.show("w")
    assert (target.device_name, target.device_type) == ("pc1", "test")
    assert target.mac == "aa:bb:cc:dd:ee:01"
    assert (target.vdisk_id, target.vdisk_name, target.access_mode) == (vdisk.id, "w", "private")
    assert target.path == setup.data_dir / "store" / "w" / "base.raw"
    assert target.path.is_absolute() and target.path.is_file()
    assert target.size == 1 << 20 == target.path.stat().st_size
    assert target.write_cache_type == "device-ram"
    assert target.write_cache_limit_bytes == 3 * 1024 * 1024
    assert target.description == "golden image"
    assert target.device_id == setup.devices.show("pc1").id
    assert (target.version, target.chain, target.chain_formats, target.writable) == (
        0,
        (target.path,),
        ("raw",),
        True,
    )  # private mode: one file, read/write
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.size = 0


def test_name_wins_over_mac(setup):
    setup.devices.add("aabbccddee01", vdisk="w")
    assert setup.exports.resolve("aabbccddee01").device_name == "aabbccddee01"
    assert setup.exports.resolve("aa:bb:cc:dd:ee:01").device_name == "pc1"


def test_no_limit_is_none(setup):
    setup.vdisks.set("w", cache_limit_mb=None)
    assert setup.exports.resolve("pc1").write_cache_limit_bytes is None


def test_unknown_device(setup):
    with pytest.raises(NotFound) as info:
        setup.exports.resolve("ghost")
    assert str(info.value) == "no device named ghost"
    with pytest.raises(NotFound):
        setup.exports.resolve("aa:bb:cc:dd:ee:99")


def test_device_without_vdisk(setup):
    setup.devices.add("pc2")
    with pytest.raises(Invalid) as info:
        setup.exports.resolve("pc2")
    assert str(info.value) == "device pc2 has no vDisk assigned"


def test_vdisk_not_in_this_store(setup):
    setup.store.delete("w")
    with pytest.raises(NotInStore) as info:
        setup.exports.resolve("pc1")
    assert str(info.value) == "vDisk w is not in this server's store"


def test_vdisk_view(setup):
    view = setup.exports.view("w")
    assert (view.vdisk_name, view.access_mode, view.size) == ("w", "private", 1 << 20)
    assert view.path == setup.store.path_of("w")
    assert view.vdisk_id == setup.vdisks.show("w").id
    assert (view.version, view.chain, view.chain_formats) == (0, (view.path,), ("raw",))
    with pytest.raises(NotFound, match="no vDisk named nope"):
        setup.exports.view("nope")
    setup.store.delete("w")
    with pytest.raises(Unavailable, match="not in this server's store"):
        setup.exports.view("w")


def test_list_exports(setup, raw_image):
    setup.vdisks.import_image("std", raw_image)
    setup.devices.add("b-pc", vdisk="std")
    setup.devices.add("a-none")
    assert setup.exports.list() == [
        ("b-pc", "vDisk std (standard)"),
        ("pc1", "vDisk w (private)"),
    ]


def test_standard_devices_get_read_only_chains(setup, raw_image):
    setup.vdisks.import_image("std", raw_image)
    setup.devices.add("m1", vdisk="std", device_type="maintenance")
    setup.devices.add("p1", vdisk="std")
    assert setup.exports.resolve("m1").writable is False  # nothing open: boots like test
    setup.versions.new("std")
    maintenance, production = setup.exports.resolve("m1"), setup.exports.resolve("p1")
    assert (maintenance.version, maintenance.writable, len(maintenance.chain)) == (1, True, 2)
    assert (production.version, production.writable, len(production.chain)) == (0, False, 1)
    view = setup.exports.view("std")
    assert (view.version, view.path) == (0, production.path)
