"""vDisk service: import, list, show, set, delete, verify — and refusals that
change nothing."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest
from sqlalchemy import update

from tests.service.helpers import (
    audit_actions,
    dump,
    make_raw,
    new_sealed_version,
    write_version,
)
from vdfarm.farm.models import VdiskVersion
from vdfarm.service.errors import Conflict, Invalid, NotFound, Unavailable
from vdfarm.store import qemu_img
from vdfarm.store.manifest import write_manifest
from vdfarm.store.store import sha256_of


def test_import_creates_row_lock_store_and_audit(farm, raw_image, clock):
    info = farm.vdisks.import_image(
        "win10",
        raw_image,
        mode="private",
        write_cache="device-ram",
        cache_limit_mb=256,
        description="golden",
    )
    assert (info.name, info.size, info.format) == ("win10", 1 << 20, "raw")
    assert (info.access_mode, info.write_cache_type, info.write_cache_limit_mb) == (
        "private",
        "device-ram",
        256,
    )
    assert info.description == "golden" and info.in_store and info.devices == ()
    assert info.created_at == clock.now
    assert info.sha256 == farm.store.manifest("win10").top.sha256
    assert farm.vdisks.show("win10") == info
    [lock] = farm.locks.list()
    assert (lock.vdisk, lock.state, lock.fencing_token) == ("win10", "free", 0)
    [entry] = [e for e in farm.audit.list() if e.action == "vdisk.import"]
    assert entry.actor == "test:me" and entry.after["name"] == "win10" and entry.before is None


def test_import_qcow2_matches_source(farm, tmp_path):
    source = tmp_path / "src.qcow2"
    qemu_img.create(source, "qcow2", 2 << 20)
    subprocess.run(
        ["qemu-io", "-c", "write -P 0x33 4096 8192", str(source)], check=True, capture_output=True
    )
    info = farm.vdisks.import_image("q", source)
    assert info.size == 2 << 20
    assert qemu_img.compare(farm.store.path_of("q"), source)


def test_list_is_sorted(farm, raw_image):
    for name in ("b", "a", "c"):
        farm.vdisks.import_image(name, raw_image)
    assert [v.name for v in farm.vdisks.list()] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"name": "bad name"}, Invalid, "invalid vDisk name"),
        ({"mode": "shared"}, Invalid, "invalid mode"),
        ({"write_cache": "tmpfs"}, Invalid, "invalid write-cache type"),
        ({"cache_limit_mb": 0}, Invalid, "invalid write-cache limit"),
        ({"source": "missing.raw"}, Invalid, "does not exist"),
        ({"name": "taken"}, Conflict, "vDisk taken already exists"),
    ],
)
def test_import_refusals_change_nothing(farm, raw_image, tmp_path, kwargs, error, text):
    farm.vdisks.import_image("taken", raw_image)
    before = dump(farm)
    args = {"name": "new", "source": raw_image} | kwargs
    if args["source"] == "missing.raw":
        args["source"] = tmp_path / "missing.raw"
    name, source = args.pop("name"), args.pop("source")
    with pytest.raises(error, match=text):
        farm.vdisks.import_image(name, source, **args)
    assert dump(farm) == before


def test_import_of_unsupported_source_changes_nothing(farm, tmp_path):
    bad = tmp_path / "x.vdi"
    qemu_img.create(bad, "vdi", 1 << 20)
    before = dump(farm)
    with pytest.raises(Invalid, match="unsupported format"):
        farm.vdisks.import_image("x", bad)
    assert dump(farm) == before


def test_orphan_in_store_is_a_conflict(farm, raw_image):
    farm.store.import_image("orphan", raw_image)
    before = dump(farm)
    with pytest.raises(Conflict, match="already exists in the store"):
        farm.vdisks.import_image("orphan", raw_image)
    assert dump(farm) == before


def test_failed_db_insert_removes_the_store_entry(farm, raw_image, monkeypatch):
    def fail(*_a, **_k):
        raise Unavailable("farm database error: gone")

    monkeypatch.setattr(farm.vdisks, "_add_row", fail)
    before = dump(farm)
    with pytest.raises(Unavailable):
        farm.vdisks.import_image("w", raw_image)
    assert dump(farm) == before


def test_set_changes_and_audits(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    info = farm.vdisks.set(
        "w", mode="private", write_cache="server-ram", cache_limit_mb=64, description="new"
    )
    assert (
        info.access_mode,
        info.write_cache_type,
        info.write_cache_limit_mb,
        info.description,
    ) == ("private", "server-ram", 64, "new")
    cleared = farm.vdisks.set("w", cache_limit_mb=None)
    assert cleared.write_cache_limit_mb is None and cleared.access_mode == "private"
    entries = [e for e in farm.audit.list() if e.action == "vdisk.set"]
    assert entries[0].before["access_mode"] == "standard"
    assert entries[0].after["access_mode"] == "private"
    assert entries[1].before["write_cache_limit_mb"] == 64


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, Invalid),
        ({"mode": "x"}, Invalid),
        ({"write_cache": "x"}, Invalid),
        ({"cache_limit_mb": -5}, Invalid),
        ({"description": "x" * 5000}, Invalid),
        ({"require_tls": "yes"}, Invalid),
        ({"require_tls": 1}, Invalid),
    ],
)
def test_set_refusals_change_nothing(farm, raw_image, kwargs, error):
    farm.vdisks.import_image("w", raw_image)
    before = dump(farm)
    with pytest.raises(error):
        farm.vdisks.set("w", **kwargs)
    with pytest.raises(NotFound, match="no vDisk named nope"):
        farm.vdisks.set("nope", mode="private")
    assert dump(farm) == before


def test_mode_change_refused_while_locked(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    dev = farm.devices.add("pc1", vdisk="w")
    vdisk_id = farm.vdisks.show("w").id
    farm.locks.acquire(vdisk_id, dev.id, 30)
    with pytest.raises(Conflict, match="locked by device pc1"):
        farm.vdisks.set("w", mode="private")
    assert farm.vdisks.set("w", description="ok").description == "ok"


def test_delete_removes_everything(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    gone = farm.vdisks.delete("w")
    assert gone.name == "w"
    assert farm.vdisks.list() == [] and farm.locks.list() == []
    assert not farm.store.contains("w")
    assert audit_actions(farm)[-1] == "vdisk.delete"
    with pytest.raises(NotFound):
        farm.vdisks.delete("w")


def test_delete_refused_while_assigned(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    farm.devices.add("pc1", vdisk="w")
    before = dump(farm)
    with pytest.raises(Conflict, match="assigned to device\\(s\\) pc1"):
        farm.vdisks.delete("w")
    assert dump(farm) == before


def test_delete_refused_while_locked_allowed_after_expiry(farm, raw_image, clock):
    farm.vdisks.import_image("w", raw_image)
    dev = farm.devices.add("pc1", vdisk="w")
    farm.locks.acquire(farm.vdisks.show("w").id, dev.id, 10)
    farm.devices.assign("pc1", None)
    before = dump(farm)
    with pytest.raises(Conflict, match="is locked by device pc1"):
        farm.vdisks.delete("w")
    assert dump(farm) == before
    clock.advance(11)
    farm.vdisks.delete("w")
    assert farm.vdisks.list() == []


def test_delete_of_vdisk_missing_from_this_store(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    farm.store.delete("w")
    assert farm.vdisks.show("w").in_store is False
    farm.vdisks.delete("w")
    assert farm.vdisks.list() == []


def test_verify(farm, tmp_path):
    farm.vdisks.import_image("w", make_raw(tmp_path / "a.raw"))
    assert farm.vdisks.verify("w").ok
    with open(farm.store.path_of("w"), "r+b") as fh:
        fh.write(b"corrupt")
    assert not farm.vdisks.verify("w").ok
    with pytest.raises(NotFound):
        farm.vdisks.verify("nope")
    farm.store.delete("w")
    with pytest.raises(Unavailable, match="not in this server's store"):
        farm.vdisks.verify("w")


def test_set_max_versions(farm, raw_image):
    info = farm.vdisks.import_image("w", raw_image)
    assert (info.max_versions, info.override_version) == (5, None)
    assert farm.vdisks.set("w", max_versions=8).max_versions == 8
    entry = farm.audit.list()[-1]
    assert (entry.before["max_versions"], entry.after["max_versions"]) == (5, 8)


def test_require_tls_is_set_shown_audited_and_resolved(farm, raw_image):
    assert farm.vdisks.import_image("w", raw_image).require_tls is False
    farm.devices.add("pc1", vdisk="w")
    target = farm.exports.resolve("pc1")
    farm.sessions.started(target.device_id, target.vdisk_id, target.version)
    # in use: require-TLS still changes (it is checked at the next connection)
    assert farm.vdisks.set("w", require_tls=True).require_tls is True
    entry = farm.audit.list()[-1]
    assert entry.action == "vdisk.set"
    assert (entry.before["require_tls"], entry.after["require_tls"]) == (False, True)
    assert farm.exports.resolve("pc1").require_tls and farm.exports.view("w").require_tls
    assert farm.vdisks.set("w", require_tls=False).require_tls is False
    assert not farm.exports.resolve("pc1").require_tls


def test_require_tls_bad_value_is_one_line(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    before = dump(farm)
    with pytest.raises(Invalid) as raised:
        farm.vdisks.set("w", require_tls="on")
    assert str(raised.value) == "invalid require-tls 'on': give true or false"
    assert dump(farm) == before


def test_verify_checks_every_version(farm, tmp_path):
    farm.vdisks.import_image("w", make_raw(tmp_path / "a.raw"))
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    new_sealed_version(farm, 0x11)
    farm.versions.new("w")
    write_version(farm, 0x22)
    assert farm.vdisks.verify("w").ok  # the open version has no hash yet
    with open(farm.store.root / "w" / "v1.qcow2", "r+b") as fh:
        fh.seek(40)
        fh.write(b"\xff" * 8)
    problems = farm.vdisks.verify("w").problems
    assert problems == ("v1.qcow2 does not match its sha256",)


def test_verify_runs_qemu_img_check_on_sealed_deltas(farm, tmp_path):
    farm.vdisks.import_image("w", make_raw(tmp_path / "a.raw"))
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    new_sealed_version(farm, 0x11)
    path = farm.store.root / "w" / "v1.qcow2"
    with open(path, "r+b") as fh:  # corrupt, then record the corrupt file's hash everywhere
        fh.seek(40)
        fh.write(b"\xff" * 8)
    manifest = farm.store.manifest("w")
    sealed = replace(manifest.top, sha256=sha256_of(path))
    write_manifest(farm.store.root / "w", replace(manifest, files=(manifest.files[0], sealed)))
    with farm.session() as session:
        session.execute(
            update(VdiskVersion).where(VdiskVersion.number == 1).values(sha256=sealed.sha256)
        )
    [problem] = farm.vdisks.verify("w").problems
    assert problem.startswith("qemu-img check failed on v1.qcow2")


def test_import_audit_names_the_source(farm, raw_image, monkeypatch):
    monkeypatch.chdir(raw_image.parent)
    farm.vdisks.import_image("named", raw_image.name)
    [entry] = [e for e in farm.audit.list() if e.action == "vdisk.import"]
    assert entry.after["source"] == str(raw_image)
