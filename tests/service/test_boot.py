"""Boot files of versions through the service: attached to the newest
version (copied into the store, hashed, listed, audited), replaced one by
one, carried forward by a new version, cleared, refused in one line
without a change, found again by (vDisk, version, kind) only as the
database recorded them, and inventoried per server."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from tests.service.helpers import dump, new_sealed_version, store_files
from vdfarm.farm.models import StoreBootFile, Vdisk, VersionBootFile
from vdfarm.service.boot_records import MAX_CMDLINE
from vdfarm.service.errors import Conflict, Invalid, NotFound, Unavailable
from vdfarm.service.intents import SEAL, drop_intent, record_intent

KERNEL = b"kernel " * 5000
KERNEL2 = b"another kernel " * 4000
INITRD = b"initramfs " * 9000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def w(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    return farm


@pytest.fixture
def files(tmp_path):
    made = {}
    for name, data in (("vmlinuz", KERNEL), ("vmlinuz2", KERNEL2), ("initrd.gz", INITRD)):
        made[name] = tmp_path / name
        made[name].write_bytes(data)
    return made


def test_attach_copies_hashes_lists_and_audits(w, files):
    info = w.boot.attach(
        "w", kernel=files["vmlinuz"], initrd=files["initrd.gz"], cmdline="console=ttyS0 quiet"
    )
    assert info.number == 0
    boot = info.boot
    assert (boot.kernel.sha256, boot.kernel.size) == (sha(KERNEL), len(KERNEL))
    assert (boot.initrd.sha256, boot.initrd.size) == (sha(INITRD), len(INITRD))
    assert boot.cmdline == "console=ttyS0 quiet"
    manifest = w.store.manifest("w")
    assert {b.name for b in manifest.boot_files} == {boot.kernel.file, boot.initrd.file}
    assert (w.store.root / "w" / boot.kernel.file).read_bytes() == KERNEL
    [entry] = w.audit.list(limit=1)
    assert (entry.action, entry.target_name) == ("version.boot", "w v0")
    assert entry.before == {"boot": None}
    assert entry.after["boot"]["kernel"]["sha256"] == sha(KERNEL)
    assert entry.after["sources"] == {
        "kernel": str(files["vmlinuz"]),
        "initrd": str(files["initrd.gz"]),
    }
    assert w.versions.show("w", 0).boot == boot


def test_each_given_part_replaces_that_part_and_old_files_go(w, files):
    first = w.boot.attach("w", kernel=files["vmlinuz"], initrd=files["initrd.gz"]).boot
    assert first.cmdline == ""
    second = w.boot.attach("w", cmdline="ro").boot
    assert (second.kernel, second.initrd, second.cmdline) == (first.kernel, first.initrd, "ro")
    third = w.boot.attach("w", kernel=files["vmlinuz2"]).boot
    assert third.kernel.sha256 == sha(KERNEL2) and third.initrd == first.initrd
    names = store_files(w)
    assert first.kernel.file not in names  # no version boots it now: removed
    assert third.kernel.file in names and first.initrd.file in names


def test_a_new_version_boots_what_its_parent_boots_until_given_others(w, files):
    w.boot.attach("w", kernel=files["vmlinuz"], initrd=files["initrd.gz"], cmdline="a")
    opened = w.versions.new("w")
    assert opened.boot == w.versions.show("w", 0).boot
    w.boot.attach("w", kernel=files["vmlinuz2"], cmdline="b")  # the newest: version 1
    v0, v1 = w.versions.list("w")
    assert (v0.boot.kernel.sha256, v0.boot.cmdline) == (sha(KERNEL), "a")
    assert (v1.boot.kernel.sha256, v1.boot.cmdline) == (sha(KERNEL2), "b")
    assert v0.boot.initrd == v1.boot.initrd
    assert {v0.boot.kernel.file, v1.boot.kernel.file} <= set(store_files(w))  # both in use
    w.versions.delete("w")
    assert w.versions.list("w")[0].boot == v0.boot


def test_sealed_versions_keep_their_boot_files_through_promote_and_merge(w, files):
    w.boot.attach("w", kernel=files["vmlinuz"])
    new_sealed_version(w, "0x11")
    new_sealed_version(w, "0x22")
    assert w.versions.show("w", 2).boot.kernel.sha256 == sha(KERNEL)
    w.versions.merge("w")
    [kept] = [v for v in w.versions.list("w") if v.number == 2]
    assert kept.boot.kernel.sha256 == sha(KERNEL)


def test_clear_removes_them_and_the_files(w, files):
    info = w.boot.attach("w", kernel=files["vmlinuz"], initrd=files["initrd.gz"])
    cleared = w.boot.attach("w", clear=True)
    assert cleared.boot is None
    assert w.store.manifest("w").boot_files == ()
    assert info.boot.kernel.file not in store_files(w)
    with pytest.raises(Invalid, match="has no boot files"):
        w.boot.attach("w", clear=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, Invalid, "give a kernel, an initramfs, a command line, or --clear"),
        ({"cmdline": "x"}, Invalid, "has no boot files yet: give its kernel"),
        ({"initrd": "initrd.gz"}, Invalid, "has no boot files yet"),
        ({"kernel": "missing"}, Invalid, "does not exist"),
        ({"kernel": "vmlinuz", "cmdline": "a\nimgfetch http://x"}, Invalid, "printable ASCII"),
        ({"kernel": "vmlinuz", "cmdline": "a\tb"}, Invalid, "printable ASCII"),
        ({"kernel": "vmlinuz", "cmdline": "é"}, Invalid, "printable ASCII"),
        ({"kernel": "vmlinuz", "cmdline": "x" * (MAX_CMDLINE + 1)}, Invalid, "at most 1024"),
        ({"kernel": "vmlinuz", "clear": True}, Invalid, "give --clear alone"),
    ],
)
def test_bad_requests_are_refused_in_one_line_and_change_nothing(w, files, kwargs, error, message):
    for key in ("kernel", "initrd"):
        if key in kwargs:
            kwargs[key] = files.get(kwargs[key], files["vmlinuz"].with_name(kwargs[key]))
    before = dump(w)
    with pytest.raises(error, match=message) as refused:
        w.boot.attach("w", **kwargs)
    assert "\n" not in refused.value.message
    assert dump(w) == before


def test_unknown_private_busy_or_absent_vdisks_are_refused(w, files, raw_image, tmp_path):
    with pytest.raises(NotFound, match="no vDisk named nope"):
        w.boot.attach("nope", kernel=files["vmlinuz"])
    with pytest.raises(Invalid, match="invalid vDisk name"):
        w.boot.attach("../w", kernel=files["vmlinuz"])
    w.vdisks.import_image("mine", raw_image, mode="private")
    before = dump(w)
    with pytest.raises(Invalid, match="is in private mode: boot files are kept with versions"):
        w.boot.attach("mine", kernel=files["vmlinuz"])
    with w.session() as session:  # a seal under way
        row = session.scalars(select(Vdisk).where(Vdisk.name == "w")).one()
        intent = record_intent(session, row, w.server_id, SEAL, {"actor": "x"}, w.now())
        session.flush()
        vdisk_id, intent_id = row.id, intent.id
    with pytest.raises(Conflict):
        w.boot.attach("w", kernel=files["vmlinuz"])
    with w.session() as session:
        drop_intent(session, vdisk_id, intent_id)
    (w.store.root / "mine").rename(tmp_path / "away")
    w.vdisks.set("mine", mode="standard")
    before = dump(w)
    with pytest.raises(Unavailable, match="is not in this server's store"):
        w.boot.attach("mine", kernel=files["vmlinuz"])
    assert dump(w) == before


def test_a_vdisk_with_boot_files_cannot_go_private(w, files):
    w.boot.attach("w", kernel=files["vmlinuz"])
    w.devices.delete("pm")
    with pytest.raises(Invalid, match="has boot files: a private vDisk does not boot"):
        w.vdisks.set("w", mode="private")
    w.boot.attach("w", clear=True)
    assert w.vdisks.set("w", mode="private").access_mode == "private"


def test_a_newest_version_that_changed_during_the_copy_is_a_conflict(w, files, monkeypatch):
    from vdfarm.store import boot_files

    real_copy = boot_files.copy_in

    def copy_then_open_a_version(store, vdisk, source):
        entry = real_copy(store, vdisk, source)
        w.versions.new("w")  # the newest version changes under the attach
        return entry

    monkeypatch.setattr(boot_files, "copy_in", copy_then_open_a_version)
    with pytest.raises(Conflict, match="changed .* while its boot files were copied"):
        w.boot.attach("w", kernel=files["vmlinuz"])
    assert [v.boot for v in w.versions.list("w")] == [None, None]
    assert not any(n.startswith("kernel-") for n in store_files(w))  # the copy went again


def test_held_answers_only_what_the_database_recorded(w, files):
    info = w.boot.attach("w", kernel=files["vmlinuz"], initrd=files["initrd.gz"])
    held = w.boot.held("w", 0, "kernel")
    assert (held.path.read_bytes(), held.size, held.sha256) == (KERNEL, len(KERNEL), sha(KERNEL))
    assert w.boot.held("w", 0, "initrd", sha(INITRD)).size == len(INITRD)
    for args in (
        ("w", 0, "kernel", sha(KERNEL2)),  # not that file (any more)
        ("w", 1, "kernel", None),
        ("w", 0, "bios", None),
        ("x", 0, "kernel", None),
        ("../w", 0, "kernel", None),
    ):
        with pytest.raises(NotFound):
            w.boot.held(*args)
    (w.store.root / "w" / info.boot.initrd.file).unlink()  # gone behind vdfarm's back
    with pytest.raises(NotFound, match="this server holds no initrd of version 0 of vDisk w"):
        w.boot.held("w", 0, "initrd")


def test_the_inventory_lists_the_boot_files_held(w, files):
    info = w.boot.attach("w", kernel=files["vmlinuz"], initrd=files["initrd.gz"])
    w.servers.heartbeat()

    def rows():
        with w.session() as session:
            return sorted((r.kind, r.sha256) for r in session.scalars(select(StoreBootFile)).all())

    assert rows() == sorted([("kernel", sha(KERNEL)), ("initrd", sha(INITRD))])
    (w.store.root / "w" / info.boot.kernel.file).write_bytes(b"short")
    w.servers.record_inventory()
    assert rows() == [("initrd", sha(INITRD))]


def test_deleting_the_vdisk_takes_its_boot_files_and_rows(w, files):
    w.boot.attach("w", kernel=files["vmlinuz"], initrd=files["initrd.gz"])
    w.versions.new("w")
    w.servers.heartbeat()
    w.devices.delete("pm")
    w.vdisks.delete("w")
    with w.session() as session:
        for table in (VersionBootFile, StoreBootFile):
            assert session.scalars(select(table)).all() == []
    assert not (w.store.root / "w").exists()
