"""Version service: new, promote, revert, override, delete, list — what each
device type boots after each step, the files after each step (real qemu-img),
and refusals that change nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from tests.service.helpers import (
    assert_qemu_clean,
    audit_actions,
    backing_of,
    dump,
    make_raw,
    new_sealed_version,
    store_files,
    write_version,
)
from vdfarm.service.errors import Conflict, Invalid, NotFound, Unavailable
from vdfarm.store.manifest import write_manifest
from vdfarm.store.store import sha256_of


@pytest.fixture
def vfarm(farm, tmp_path):
    """vDisk w (4 MiB raw) with a production, a test and a maintenance device."""
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw", size=4 << 20))
    farm.devices.add("pp", vdisk="w")
    farm.devices.add("pt", vdisk="w", device_type="test")
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    return farm


def booted(farm):
    """(version, writable) each device type gets now."""
    return {
        name: (t.version, t.writable)
        for name in ("pp", "pt", "pm")
        if (t := farm.exports.resolve(name))
    }


def assert_store_sound(farm):
    assert_qemu_clean(farm.store.root / "w")
    result = farm.vdisks.verify("w")
    assert result.ok, result.problems


def test_import_makes_version_0_the_base(vfarm):
    [base] = vfarm.versions.list("w")
    assert (base.number, base.access, base.parent, base.file, base.format) == (
        0,
        "production",
        None,
        "base.raw",
        "raw",
    )
    assert base.sha256 == vfarm.vdisks.show("w").sha256
    assert base.boots == ("production", "test", "maintenance") and base.devices == ()
    target = vfarm.exports.resolve("pp")
    assert target.chain == (vfarm.store.root / "w" / "base.raw",) == (target.path,)
    assert target.chain_formats == ("raw",) and target.version == 0
    assert booted(vfarm) == {"pp": (0, False), "pt": (0, False), "pm": (0, False)}


def test_new_opens_a_writable_delta_for_maintenance_only(vfarm, clock):
    info = vfarm.versions.new("w")
    assert (info.number, info.access, info.parent, info.file, info.format) == (
        1,
        "maintenance",
        0,
        "v1.qcow2",
        "qcow2",
    )
    assert info.sha256 is None and info.size > 0 and info.created_at == clock.now
    assert info.boots == ("maintenance",)
    assert booted(vfarm) == {"pp": (0, False), "pt": (0, False), "pm": (1, True)}
    target = vfarm.exports.resolve("pm")
    directory = vfarm.store.root / "w"
    assert target.chain == (directory / "base.raw", directory / "v1.qcow2")
    assert target.chain_formats == ("raw", "qcow2") and target.path == target.chain[-1]
    assert backing_of(target.path) == ("base.raw", "raw")
    assert audit_actions(vfarm)[-1] == "version.new"
    assert_store_sound(vfarm)


def test_promote_steps_and_what_devices_boot(vfarm, clock):
    vfarm.versions.new("w")
    target = write_version(vfarm, 0x11)
    result = vfarm.versions.promote("w", "test")
    info = result.version
    assert (info.number, info.access, result.merged, result.merge_skipped) == (
        1,
        "test",
        None,
        None,
    )
    assert info.sha256 == sha256_of(target.path) and info.size == target.path.stat().st_size
    assert info.sealed_at == clock.now
    assert vfarm.store.manifest("w").top.sha256 == info.sha256
    assert booted(vfarm) == {"pp": (0, False), "pt": (1, False), "pm": (1, False)}
    assert_store_sound(vfarm)
    clock.advance(10)
    info = vfarm.versions.promote("w", "production").version
    assert (info.access, info.production_at) == ("production", clock.now)
    assert booted(vfarm) == {"pp": (1, False), "pt": (1, False), "pm": (1, False)}
    assert audit_actions(vfarm)[-2:] == ["version.promote", "version.promote"]
    entry = vfarm.audit.list()[-1]
    assert (entry.target_type, entry.target_name) == ("version", "w v1")
    assert (entry.before["access"], entry.after["access"]) == ("test", "production")
    assert_store_sound(vfarm)


def test_promote_to_production_at_a_later_time_is_pending(vfarm, clock):
    vfarm.versions.new("w")
    write_version(vfarm, 0x11)
    at = clock.now + timedelta(hours=2)
    info = vfarm.versions.promote("w", "production", at=at).version
    assert (info.access, info.production_at) == ("pending", at)
    assert booted(vfarm) == {"pp": (0, False), "pt": (1, False), "pm": (1, False)}
    clock.advance(2 * 3600)
    assert vfarm.versions.list("w")[-1].access == "production"
    assert booted(vfarm)["pp"] == (1, False)


def test_running_devices_keep_the_version_they_booted(vfarm, clock):
    pp = vfarm.exports.resolve("pp")
    vfarm.sessions.started(pp.device_id, pp.vdisk_id, pp.version)
    new_sealed_version(vfarm, 0x11)
    assert vfarm.exports.resolve("pp").version == 0  # its session here: a reconnect
    [v0, v1] = vfarm.versions.list("w")
    assert (v0.devices, v1.devices) == (("pp",), ())
    assert v1.boots == ("production", "test", "maintenance")
    vfarm.sessions.ended(pp.device_id)
    assert vfarm.exports.resolve("pp").version == 1  # its next boot


def test_revert_walks_back_to_maintenance(vfarm):
    new_sealed_version(vfarm, 0x11)
    assert vfarm.versions.revert("w").access == "test"
    assert booted(vfarm)["pp"] == (0, False)
    info = vfarm.versions.revert("w")
    assert (info.access, info.sha256, info.sealed_at) == ("maintenance", None, None)
    assert not vfarm.store.manifest("w").top.sealed
    assert booted(vfarm) == {"pp": (0, False), "pt": (0, False), "pm": (1, True)}
    write_version(vfarm, 0x22)
    assert vfarm.versions.promote("w", "test").version.access == "test"
    assert audit_actions(vfarm).count("version.revert") == 2
    assert_store_sound(vfarm)


def test_override_pins_production_devices(vfarm):
    new_sealed_version(vfarm, 0x11)
    new_sealed_version(vfarm, 0x22)
    result = vfarm.versions.override("w", 1)
    assert (result.vdisk, result.version, result.previous) == ("w", 1, None)
    assert vfarm.vdisks.show("w").override_version == 1
    assert booted(vfarm) == {"pp": (1, False), "pt": (2, False), "pm": (2, False)}
    assert vfarm.versions.override("w", 0).previous == 1
    assert booted(vfarm)["pp"] == (0, False)
    cleared = vfarm.versions.override("w", None)
    assert (cleared.version, cleared.previous) == (None, 0)
    assert booted(vfarm)["pp"] == (2, False)
    entry = vfarm.audit.list()[-1]
    assert (entry.action, entry.before, entry.after) == (
        "version.override",
        {"override_version": 0},
        {"override_version": None},
    )


def test_delete_removes_the_newest_version(vfarm):
    new_sealed_version(vfarm, 0x11)
    vfarm.versions.new("w")
    gone = vfarm.versions.delete("w")
    assert (gone.number, gone.access) == (2, "maintenance")
    assert store_files(vfarm) == ["base.raw", "manifest.json", "v1.qcow2"]
    assert vfarm.versions.delete("w").number == 1
    assert store_files(vfarm) == ["base.raw", "manifest.json"]
    assert [v.number for v in vfarm.versions.list("w")] == [0]
    assert audit_actions(vfarm)[-1] == "version.delete"
    assert_store_sound(vfarm)


def test_version_numbers_grow_after_a_delete(vfarm):
    new_sealed_version(vfarm, 0x11)
    vfarm.versions.new("w")
    vfarm.versions.delete("w")
    assert vfarm.versions.new("w").number == 2


def _session(farm, device):
    target = farm.exports.resolve(device)
    farm.sessions.started(target.device_id, target.vdisk_id, target.version)


def _lock(farm, device):
    target = farm.exports.resolve(device)
    farm.locks.acquire(target.vdisk_id, target.device_id, 30)


REFUSALS = [
    # (setup, call, error, text)
    ("base", lambda f: f.versions.promote("w", "test"), Invalid, "no version open to promote"),
    (
        "base",
        lambda f: f.versions.promote("w", "production"),
        Invalid,
        "no version open to promote",
    ),
    ("prod", lambda f: f.versions.promote("w", "production"), Invalid, "already in production"),
    ("test", lambda f: f.versions.promote("w", "test"), Invalid, "already in test"),
    (
        "open+lock",
        lambda f: f.versions.promote("w", "test"),
        Conflict,
        "while its maintenance device is connected: vDisk w is locked by device pm",
    ),
    (
        "open+session",
        lambda f: f.versions.promote("w", "production"),
        Conflict,
        "device(s) pm booted version 1",
    ),
    (
        "open",
        lambda f: f.versions.promote("w", "test", at=datetime(2030, 2, 1)),
        Invalid,
        "give a time with a zone",
    ),
    (
        "open",
        lambda f: f.versions.promote("w", "test", at=datetime.now().astimezone()),
        Invalid,
        "--at is only for a promotion to production",
    ),
    ("open", lambda f: f.versions.promote("w", "staging"), Invalid, "invalid access"),
    ("base", lambda f: f.versions.revert("w"), Invalid, "cannot revert the base of vDisk w"),
    ("open", lambda f: f.versions.revert("w"), Invalid, "already in maintenance"),
    ("test+session", lambda f: f.versions.revert("w"), Conflict, "device(s) pt booted version 1"),
    ("test+pin", lambda f: f.versions.revert("w"), Conflict, "pinned to version 1"),
    ("prod", lambda f: f.versions.override("w", 5), NotFound, "vDisk w has no version 5"),
    ("prod", lambda f: f.versions.override("w", -1), Invalid, "invalid version -1"),
    ("open", lambda f: f.versions.override("w", 1), Invalid, "open for maintenance"),
    ("prod", lambda f: f.versions.override("w", None), Invalid, "has no override to clear"),
    ("open", lambda f: f.versions.new("w"), Conflict, "already open for maintenance"),
    ("private", lambda f: f.versions.new("p"), Invalid, "vDisk p is in private mode"),
    ("base", lambda f: f.versions.delete("w"), Invalid, "cannot delete the base of vDisk w"),
    ("open+lock", lambda f: f.versions.delete("w"), Conflict, "locked by device pm"),
    ("test+session", lambda f: f.versions.delete("w"), Conflict, "cannot be deleted"),
    ("test+pin", lambda f: f.versions.delete("w"), Conflict, "pinned to version 1"),
    ("open", lambda f: f.vdisks.set("w", mode="private"), Invalid, "private mode needs"),
    ("base", lambda f: f.vdisks.set("w", max_versions=1), Invalid, "invalid max-versions"),
    ("base", lambda f: f.versions.new("nope"), NotFound, "no vDisk named nope"),
    ("base", lambda f: f.versions.promote("nope", "test"), NotFound, "no vDisk named nope"),
    ("base", lambda f: f.versions.revert("nope"), NotFound, "no vDisk named nope"),
    ("base", lambda f: f.versions.override("nope", 0), NotFound, "no vDisk named nope"),
    ("base", lambda f: f.versions.list("nope"), NotFound, "no vDisk named nope"),
    ("base", lambda f: f.versions.delete("nope"), NotFound, "no vDisk named nope"),
]


def _setup(farm, kind, tmp_path):
    if kind == "private":
        farm.vdisks.import_image("p", make_raw(tmp_path / "p.raw"), mode="private")
    if kind.startswith("open"):
        farm.versions.new("w")
        write_version(farm, 0x11)
    if kind.startswith("test"):
        new_sealed_version(farm, 0x11, to="test")
    if kind == "prod":
        new_sealed_version(farm, 0x11)
    if kind.endswith("+lock"):
        _lock(farm, "pm")
    if kind == "open+session":
        _session(farm, "pm")
    if kind == "test+session":
        _session(farm, "pt")
    if kind == "test+pin":
        farm.versions.override("w", 1)


@pytest.mark.parametrize(
    "kind, call, error, text", REFUSALS, ids=[f"{r[0]}-{r[3][:30]}" for r in REFUSALS]
)
def test_refusals_change_nothing(vfarm, tmp_path, kind, call, error, text):
    _setup(vfarm, kind, tmp_path)
    before = dump(vfarm)
    with pytest.raises(error) as info:
        call(vfarm)
    assert text in str(info.value)
    assert "\n" not in str(info.value)
    assert dump(vfarm) == before


def test_a_store_that_lost_a_version_is_unavailable(vfarm):
    new_sealed_version(vfarm, 0x11)
    (vfarm.store.root / "w" / "v1.qcow2").unlink()
    manifest = vfarm.store.manifest("w")
    write_manifest(vfarm.store.root / "w", replace(manifest, files=manifest.files[:1]))
    before = dump(vfarm)
    with pytest.raises(Unavailable, match="version 1 of vDisk w is not in this server's store"):
        vfarm.exports.resolve("pp")
    with pytest.raises(Unavailable):
        vfarm.versions.new("w")
    assert dump(vfarm) == before
    assert not vfarm.vdisks.verify("w").ok
