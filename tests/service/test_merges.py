"""Merge (updates / new base), max-versions auto-merge, and export — against real
qemu-img: the booted version's content never changes, old files go only when
no session may read them, refusals change nothing."""

from __future__ import annotations

import subprocess

import pytest

from tests.service.helpers import (
    assert_qemu_clean,
    audit_actions,
    dump,
    flat_copy,
    make_raw,
    new_sealed_version,
    store_files,
)
from vdfarm.service.errors import Conflict, Invalid, NotFound
from vdfarm.service.merges import EXPORT_FORMATS
from vdfarm.store import qemu_img


@pytest.fixture
def vfarm(farm, tmp_path):
    """vDisk w with versions 1..3 in production; devices pp (production), pt
    (test), pm (maintenance)."""
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw", size=4 << 20))
    farm.devices.add("pp", vdisk="w")
    farm.devices.add("pt", vdisk="w", device_type="test")
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    for pattern in (0x11, 0x22, 0x33):
        new_sealed_version(farm, pattern)
    return farm


def connect(farm, device):
    target = farm.exports.resolve(device)
    farm.sessions.started(target.device_id, target.vdisk_id, target.version)
    return target


def disconnect(farm, device):
    farm.sessions.ended(farm.devices.show(device).id)


def assert_sound(farm):
    assert_qemu_clean(farm.store.root / "w")
    result = farm.vdisks.verify("w")
    assert result.ok, result.problems


def test_merge_updates_keeps_content_and_waits_for_readers(vfarm, tmp_path, clock):
    before = connect(vfarm, "pp")
    assert before.version == 3 and len(before.chain) == 4
    flat_before = flat_copy(before.path, tmp_path / "before.raw")
    clock.advance(1)
    result = vfarm.versions.merge("w")
    assert (result.kept, result.base, result.removed, result.new_base) == (3, 0, (1, 2), False)
    assert result.retained == ("v1.qcow2", "v2.qcow2") and result.deleted == ()
    after = vfarm.exports.resolve("pp")
    assert after.version == 3 and [p.name for p in after.chain] == ["base.raw", "v3.qcow2"]
    assert qemu_img.compare(after.path, flat_before)
    assert [v.number for v in vfarm.versions.list("w")] == [0, 3]
    assert "v1.qcow2" in store_files(vfarm)  # pp may still read through the old chain
    assert_sound(vfarm)
    assert audit_actions(vfarm)[-1] == "version.merge"
    disconnect(vfarm, "pp")
    assert store_files(vfarm) == ["base.raw", "manifest.json", "v3.qcow2"]
    assert vfarm.store.manifest("w").retired == ()
    assert_sound(vfarm)


def test_merge_new_base(vfarm, tmp_path, clock):
    connect(vfarm, "pt")
    flat_before = flat_copy(vfarm.exports.resolve("pp").path, tmp_path / "before.raw")
    old_sha = vfarm.vdisks.show("w").sha256
    clock.advance(1)
    result = vfarm.versions.merge("w", new_base=True)
    assert (result.kept, result.base, result.removed) == (3, 3, (0, 1, 2))
    target = vfarm.exports.resolve("pp")
    assert target.chain == (vfarm.store.root / "w" / "v3.qcow2",)
    assert target.chain_formats == ("qcow2",)
    assert qemu_img.compare(target.path, flat_before)
    info = vfarm.vdisks.show("w")
    assert info.format == "qcow2" and info.sha256 != old_sha
    assert info.sha256 == vfarm.versions.list("w")[0].sha256
    [base] = vfarm.versions.list("w")
    assert (base.number, base.parent, base.access) == (3, None, "production")
    assert "base.raw" in store_files(vfarm)
    assert_sound(vfarm)
    disconnect(vfarm, "pt")
    assert store_files(vfarm) == ["manifest.json", "v3.qcow2"]
    with pytest.raises(Invalid, match="cannot revert the base"):
        vfarm.versions.revert("w")


def test_session_after_the_merge_does_not_hold_old_files(vfarm, clock):
    connect(vfarm, "pp")
    clock.advance(1)
    vfarm.versions.merge("w")
    clock.advance(1)
    connect(vfarm, "pt")  # booted the merged chain: never reads v1/v2
    disconnect(vfarm, "pp")
    assert store_files(vfarm) == ["base.raw", "manifest.json", "v3.qcow2"]


def test_a_session_on_the_base_does_not_hold_merged_deltas(vfarm, clock):
    vfarm.versions.override("w", 0)
    connect(vfarm, "pp")
    vfarm.versions.override("w", None)
    clock.advance(1)
    result = vfarm.versions.merge("w")
    assert result.deleted == ("v1.qcow2", "v2.qcow2") and result.retained == ()


def test_merge_keeps_test_and_maintenance_versions_above(vfarm, tmp_path):
    new_sealed_version(vfarm, 0x44, to="test")
    vfarm.versions.new("w")
    test_flat = flat_copy(vfarm.exports.resolve("pt").path, tmp_path / "t.raw")
    result = vfarm.versions.merge("w")
    assert (result.kept, result.removed) == (3, (1, 2))
    assert [(v.number, v.access) for v in vfarm.versions.list("w")] == [
        (0, "production"),
        (3, "production"),
        (4, "test"),
        (5, "maintenance"),
    ]
    assert qemu_img.compare(vfarm.exports.resolve("pt").path, test_flat)
    assert vfarm.exports.resolve("pm").writable
    assert_sound(vfarm)


@pytest.mark.parametrize("new_base", [False, True])
def test_merge_refused_while_a_device_runs_a_version_it_would_delete(vfarm, new_base):
    vfarm.versions.override("w", 0 if new_base else 1)
    connect(vfarm, "pp")
    vfarm.versions.override("w", None)
    before = dump(vfarm)
    with pytest.raises(
        Conflict, match="device\\(s\\) pp booted version . of vDisk w, which the merge would delete"
    ):
        vfarm.versions.merge("w", new_base=new_base)
    with pytest.raises(Conflict, match="which the merge would delete"):
        vfarm.versions.check_merge("w", new_base=new_base)  # what a job would meet, now
    assert dump(vfarm) == before


def test_merge_with_nothing_to_fold_changes_nothing(vfarm):
    before = dump(vfarm)
    vfarm.versions.check_merge("w")  # something to fold: passes, writes nothing
    assert dump(vfarm) == before
    vfarm.versions.merge("w")
    before = dump(vfarm)
    for attempt in (vfarm.versions.merge, vfarm.versions.check_merge):
        with pytest.raises(Invalid, match="nothing to merge in vDisk w"):
            attempt("w")
        with pytest.raises(NotFound, match="no vDisk named nope"):
            attempt("nope")
    assert dump(vfarm) == before


def test_max_versions_merges_after_a_promote(vfarm):
    vfarm.vdisks.set("w", max_versions=5)
    assert new_sealed_version(vfarm, 0x44).merged is None  # 5 versions: not longer
    result = new_sealed_version(vfarm, 0x55, to="test")
    merged = result.merged
    assert merged is not None and merged.automatic
    assert (merged.kept, merged.removed) == (4, (1, 2, 3))
    assert [v.number for v in vfarm.versions.list("w")] == [0, 4, 5]
    [entry] = [e for e in vfarm.audit.list() if e.action == "version.merge"]
    assert entry.after["automatic"] is True
    assert_sound(vfarm)


def test_auto_merge_skipped_when_a_device_holds_an_old_version(vfarm):
    vfarm.vdisks.set("w", max_versions=3)
    vfarm.versions.override("w", 1)
    connect(vfarm, "pp")
    vfarm.versions.override("w", None)
    result = new_sealed_version(vfarm, 0x44)
    assert result.version.access == "production" and result.merged is None
    assert "pp booted version 1" in result.merge_skipped
    assert len(vfarm.versions.list("w")) == 5


def exported_equals_chain(farm, out, fmt, number, tmp_path):
    rows = {v.number: v for v in farm.versions.list("w")}
    reference = tmp_path / f"ref{number}.raw"
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-O",
            "raw",
            str(farm.store.root / "w" / rows[number].file),
            str(reference),
        ],
        check=True,
        capture_output=True,
    )
    return qemu_img.info(out)["format"] == fmt and qemu_img.compare(out, reference)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_every_format(vfarm, tmp_path, fmt):
    out = tmp_path / f"w2.{fmt}"
    before = dump(vfarm)
    result = vfarm.versions.export("w", out, fmt, version=2)
    assert (result.version, result.format, result.path, result.size) == (
        2,
        fmt,
        out,
        out.stat().st_size,
    )
    assert exported_equals_chain(vfarm, out, fmt, 2, tmp_path)
    assert not exported_equals_chain(vfarm, out, fmt, 3, tmp_path)
    assert dump(vfarm) == before


def test_export_defaults_to_what_production_boots(vfarm, tmp_path):
    new_sealed_version(vfarm, 0x44, to="test")
    vfarm.versions.override("w", 2)
    result = vfarm.versions.export("w", tmp_path / "out.raw", "raw")
    assert result.version == 2
    assert exported_equals_chain(vfarm, tmp_path / "out.raw", "raw", 2, tmp_path)


@pytest.mark.parametrize(
    "args, error, text",
    [
        (("w", "out.vhd", "vhd"), Invalid, "unknown export format 'vhd'"),
        (("w", "taken.raw", "raw"), Conflict, "already exists"),
        (("w", "no/such/dir.raw", "raw"), Invalid, "does not exist"),
        (("w", "out.raw", "raw", 9), NotFound, "vDisk w has no version 9"),
        (("nope", "out.raw", "raw"), NotFound, "no vDisk named nope"),
        (("w", "out.raw", "raw", 4), Conflict, "version 4 is open and in use"),
    ],
)
def test_export_refusals_change_nothing(vfarm, tmp_path, args, error, text):
    vfarm.versions.new("w")
    target = vfarm.exports.resolve("pm")
    vfarm.locks.acquire(target.vdisk_id, target.device_id, 30)
    (tmp_path / "taken.raw").write_bytes(b"keep")
    name, out, fmt, *version = args
    listing = sorted(p.name for p in tmp_path.iterdir())
    before = dump(vfarm)
    with pytest.raises(error, match=text):
        vfarm.versions.export(name, tmp_path / out, fmt, *version)
    assert dump(vfarm) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert (tmp_path / "taken.raw").read_bytes() == b"keep"
