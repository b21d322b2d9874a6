"""Hole 8: merge and promote's seal are crash-safe between the store and the
database. The step is cut at each boundary — a crash (the process dies:
an exception nothing catches) or a failing database — and `repair` then
completes or rolls it back: the vDisk boots, verifies, merges and gets a
new version again, and no content is lost."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from tests.service.helpers import audit_actions, flat_copy, make_raw, new_sealed_version
from vdfarm.service import merges as merges_module
from vdfarm.service import promotions as promotions_module
from vdfarm.service.errors import Conflict, Unavailable
from vdfarm.service.repairs import COMPLETED, NOTHING, ROLLED_BACK
from vdfarm.store import qemu_img
from vdfarm.store import versions as store_versions


class Crash(BaseException):
    """The process dies here: nothing catches it, nothing cleans up."""


def db_failure(*_args, **_kwargs):
    raise OperationalError("COMMIT", {}, Exception("disk I/O error"))


def crash(*_args, **_kwargs):
    raise Crash()


@pytest.fixture
def vfarm(farm, tmp_path):
    """vDisk w with versions 1..3 in production; devices pp (production),
    pm (maintenance)."""
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw", size=4 << 20))
    farm.devices.add("pp", vdisk="w")
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    for pattern in (0x11, 0x22, 0x33):
        new_sealed_version(farm, pattern)
    return farm


def assert_usable(farm, tmp_path, flat_before, tag, new_base=False):
    """Boots (export resolves, same content), verifies, takes a new version,
    merges again."""
    target = farm.exports.resolve("pp")
    assert qemu_img.compare(target.path, flat_before)
    result = farm.vdisks.verify("w")
    assert result.ok, result.problems
    promoted = new_sealed_version(farm, 0x44)  # past max-versions it merges by itself
    merged = promoted.merged or farm.versions.merge("w", new_base=new_base)
    assert merged.kept == farm.exports.resolve("pp").version
    assert farm.vdisks.verify("w").ok
    flat_after = flat_copy(farm.exports.resolve("pp").path, tmp_path / f"after-{tag}.raw")
    with open(flat_after, "rb") as fh:  # the versions written before the cut are all there
        for number, pattern in ((1, 0x11), (2, 0x22), (3, 0x33)):
            fh.seek(number * 65536)
            assert fh.read(65536) == bytes([pattern]) * 65536


def assert_blocked(farm):
    """While the intent stands, the vDisk's versions do not change."""
    with pytest.raises(Conflict, match="vdfarm vdisk repair w"):
        farm.versions.merge("w")
    with pytest.raises(Conflict, match="vdfarm vdisk repair w"):
        farm.versions.new("w")


# (where the merge is cut, what fails there, the repair's outcome)
MERGE_CUTS = [
    ("intent recorded, fold not begun", "fold", crash, ROLLED_BACK),
    ("kept file replaced, manifest not", "manifest", crash, COMPLETED),
    ("store folded, database write fails", "apply", db_failure, COMPLETED),
    ("store folded, process dies", "apply", crash, COMPLETED),
]


@pytest.mark.parametrize("new_base", [False, True], ids=["updates", "new-base"])
@pytest.mark.parametrize(("what", "where", "failure", "outcome"), MERGE_CUTS)
def test_merge_cut_then_repaired(
    vfarm, tmp_path, monkeypatch, clock, what, where, failure, outcome, new_base
):
    flat_before = flat_copy(vfarm.exports.resolve("pp").path, tmp_path / "before.raw")
    clock.advance(1)
    with monkeypatch.context() as patch:
        if where == "fold":
            patch.setattr(store_versions, "fold", failure)
        elif where == "manifest":
            real_replace = store_versions.os.replace

            def replace_then_die(src, dst):
                real_replace(src, dst)
                if ".merge-" in str(src):
                    raise Crash()

            patch.setattr(store_versions.os, "replace", replace_then_die)
        else:
            patch.setattr(merges_module, "apply_merge", failure)
        with pytest.raises((Crash, Unavailable)):
            vfarm.versions.merge("w", new_base=new_base)
    assert_blocked(vfarm)
    result = vfarm.repairs.repair("w")
    assert (result.step, result.outcome) == ("merge", outcome), what
    assert audit_actions(vfarm)[-1] == "vdisk.repair"
    assert vfarm.repairs.repair("w").outcome == NOTHING
    assert_usable(vfarm, tmp_path, flat_before, "m", new_base)


SEAL_CUTS = [
    ("intent recorded, seal not begun", "seal", crash),
    ("file sealed, database write fails", "apply", db_failure),
    ("file sealed, process dies", "apply", crash),
]


@pytest.mark.parametrize(("what", "where", "failure"), SEAL_CUTS)
def test_promote_seal_cut_then_repaired(vfarm, tmp_path, monkeypatch, what, where, failure):
    vfarm.versions.new("w")
    written = vfarm.exports.resolve("pm")
    from tests.service.helpers import qemu_io_write

    qemu_io_write(written.path, 0x55, written.version * 65536, 65536)
    with monkeypatch.context() as patch:
        if where == "seal":
            patch.setattr(store_versions, "seal_top", failure)
        else:
            patch.setattr(promotions_module.PromotionService, "apply_promotion", failure)
        with pytest.raises((Crash, Unavailable)):
            vfarm.versions.promote("w", "production")
    assert_blocked(vfarm)
    with pytest.raises(Conflict, match="being sealed"):  # the device cannot write it now
        vfarm.locks.acquire(written.vdisk_id, written.device_id, 30, written.version)
    result = vfarm.repairs.repair("w")
    assert (result.step, result.outcome) == ("seal", COMPLETED), what
    promoted = vfarm.versions.list("w")[-1]
    assert (promoted.number, promoted.access) == (written.version, "production")
    assert promoted.sha256 == vfarm.store.manifest("w").top.sha256
    flat = flat_copy(vfarm.exports.resolve("pp").path, tmp_path / "sealed.raw")
    assert_usable(vfarm, tmp_path, flat, "s")
    with open(flat, "rb") as fh:
        fh.seek(written.version * 65536)
        assert fh.read(65536) == b"\x55" * 65536


def test_resume_all_repairs_this_servers_steps_at_start(vfarm, monkeypatch, tmp_path):
    flat_before = flat_copy(vfarm.exports.resolve("pp").path, tmp_path / "before.raw")
    with monkeypatch.context() as patch:
        patch.setattr(merges_module, "apply_merge", db_failure)
        with pytest.raises(Unavailable):
            vfarm.versions.merge("w")
    done = vfarm.repairs.resume_all()
    assert [(r.vdisk, r.step, r.outcome) for r in done] == [("w", "merge", COMPLETED)]
    assert vfarm.repairs.resume_all() == []
    assert_usable(vfarm, tmp_path, flat_before, "r")


def test_repair_refuses_a_step_still_running_here(vfarm, monkeypatch):
    from vdfarm.store.locking import busy

    with monkeypatch.context() as patch:
        patch.setattr(merges_module, "apply_merge", db_failure)
        with pytest.raises(Unavailable):
            vfarm.versions.merge("w")
    with busy(vfarm.store.root / "w"), pytest.raises(Conflict, match="running process"):
        vfarm.repairs.repair("w")
    assert vfarm.repairs.repair("w").outcome == COMPLETED
