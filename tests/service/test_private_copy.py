"""Hole 7, second half: a private device writes its vDisk's file in place.
From the moment it may write (its lock), this server's copy is no longer
called held and verified; `vdisk verify` re-hashes it once the device is
off, so the owner's legitimate writes never make it fail."""

from __future__ import annotations

from tests.service.helpers import audit_actions
from tests.service.multi import beat


def held(farm):
    return farm.servers.inventory()[farm.server_name]


def device_writes(target, data=b"\xa5" * 4096, offset=8192):
    with open(target.path, "r+b") as fh:  # what the stream does with a private vDisk
        fh.seek(offset)
        fh.write(data)


def test_private_use_unverifies_the_copy_until_verify_rehashes_it(farm, raw_image):
    farm.vdisks.import_image("mine", raw_image, mode="private")
    farm.devices.add("pc1", vdisk="mine")
    beat(farm)
    assert ("mine", 0) in held(farm)
    old_sha = farm.vdisks.show("mine").sha256

    target = farm.exports.resolve("pc1")
    assert target.writes_vdisk
    grant = farm.locks.acquire(target.vdisk_id, target.device_id, 30)
    assert ("mine", 0) not in held(farm)  # from the lock on, not "held/verified"
    device_writes(target)
    beat(farm)
    assert ("mine", 0) not in held(farm)
    busy = farm.vdisks.verify("mine")  # its device may still write: not re-hashed yet
    assert not busy.ok and "written by its private device" in busy.problems[0]

    farm.locks.release(target.vdisk_id, target.device_id, grant.token)  # session over
    result = farm.vdisks.verify("mine")
    assert result.ok, result.problems
    assert farm.vdisks.show("mine").sha256 != old_sha
    assert "vdisk.rehash" in audit_actions(farm)
    beat(farm)
    assert ("mine", 0) in held(farm)
    assert farm.vdisks.verify("mine").ok  # and stays verified


def test_a_copy_nobody_wrote_is_not_rehashed(farm, raw_image):
    farm.vdisks.import_image("mine", raw_image, mode="private")
    assert farm.vdisks.verify("mine").ok
    assert "vdisk.rehash" not in audit_actions(farm)


def test_repair_rehashes_too(farm, raw_image):
    farm.vdisks.import_image("mine", raw_image, mode="private")
    farm.devices.add("pc1", vdisk="mine")
    target = farm.exports.resolve("pc1")
    grant = farm.locks.acquire(target.vdisk_id, target.device_id, 30)
    device_writes(target)
    farm.locks.release(target.vdisk_id, target.device_id, grant.token)
    result = farm.repairs.repair("mine")
    assert result.step is None and result.notes
    assert farm.vdisks.verify("mine").ok


def test_server_start_rehashes_written_copies(farm, raw_image):
    farm.vdisks.import_image("mine", raw_image, mode="private")
    farm.devices.add("pc1", vdisk="mine")
    target = farm.exports.resolve("pc1")
    grant = farm.locks.acquire(target.vdisk_id, target.device_id, 30)
    device_writes(target)
    assert farm.repairs.resume_all() == []  # still locked: its device may write
    farm.locks.release(target.vdisk_id, target.device_id, grant.token)
    [result] = farm.repairs.resume_all()
    assert result.vdisk == "mine" and result.notes
    assert farm.repairs.resume_all() == []
    beat(farm)
    assert ("mine", 0) in held(farm)


def test_its_device_still_logs_in_to_the_home_before_the_rehash(farm, raw_image):
    farm.vdisks.import_image("mine", raw_image, mode="private")
    farm.devices.add("pc1", vdisk="mine")
    target = farm.exports.resolve("pc1")
    grant = farm.locks.acquire(target.vdisk_id, target.device_id, 30)
    device_writes(target)
    farm.locks.release(target.vdisk_id, target.device_id, grant.token)
    beat(farm)
    assert ("mine", 0) not in held(farm)  # not verified, but the one current copy
    assert farm.logins.login("pc1").server.name == farm.server_name
