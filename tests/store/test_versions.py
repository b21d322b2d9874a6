"""Version files in the store against the real qemu-img: deltas with relative
backing names, sealing, folding (merged updates / new base), retiring, export."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime

import pytest

from tests.service.helpers import (
    assert_qemu_clean,
    backing_of,
    flat_copy,
    make_raw,
    qemu_io_write,
)
from tests.store.leaks import leak_one_cluster
from vdfarm.store import qemu_img
from vdfarm.store import versions as sv
from vdfarm.store.errors import StoreError, VdiskExists
from vdfarm.store.store import Store, sha256_of

SIZE = 4 << 20
AT = datetime(2030, 1, 1, tzinfo=UTC)


def listed(directory) -> list[str]:
    """DIRECTORY's names but the chunk lists cached for peers (`.chunks-*`)."""
    return sorted(n for n in os.listdir(directory) if not n.startswith(".chunks-"))


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    store = Store(root)
    store.import_image("w", make_raw(tmp_path / "src.raw", size=SIZE))
    return store


def listing(store):
    return sorted((p.name, p.stat().st_size) for p in (store.root / "w").iterdir())


def manifest_text(store):
    return (store.root / "w" / "manifest.json").read_text()


def add_sealed(store, number, pattern):
    """Open version NUMBER, write 64 KiB of PATTERN at NUMBER * 64 KiB, seal it."""
    entry = sv.open_delta(store, "w", f"v{number}.qcow2", number)
    qemu_io_write(sv.file_path(store, "w", entry.name), pattern, number * 65536, 65536)
    return sv.seal_top(store, "w")


def test_open_delta_is_a_qcow2_on_the_relative_base(store):
    entry = sv.open_delta(store, "w", "v1.qcow2", 1)
    path = store.root / "w" / "v1.qcow2"
    assert (entry.name, entry.format, entry.parent, entry.version) == (
        "v1.qcow2",
        "qcow2",
        "base.raw",
        1,
    )
    assert not entry.sealed and entry.size is None
    assert backing_of(path) == ("base.raw", "raw")
    assert qemu_img.info(path)["virtual-size"] == SIZE
    manifest = store.manifest("w")
    assert manifest.top == entry and manifest.virtual_size == SIZE
    assert str(store.root) not in manifest_text(store)
    assert store.verify("w").ok
    assert_qemu_clean(store.root / "w")
    assert listed(store.root / "w") == ["base.raw", "manifest.json", "v1.qcow2"]


def test_open_delta_refusals_change_nothing(store):
    sv.open_delta(store, "w", "v1.qcow2", 1)
    before = (listing(store), manifest_text(store))
    with pytest.raises(StoreError, match="still open"):
        sv.open_delta(store, "w", "v2.qcow2", 2)
    sv.seal_top(store, "w")
    before = (listing(store), manifest_text(store))
    with pytest.raises(VdiskExists):
        sv.open_delta(store, "w", "v1.qcow2", 2)
    assert (listing(store), manifest_text(store)) == before


def test_seal_records_size_and_hash_and_verify_sees_later_writes(store):
    sealed = add_sealed(store, 1, 0x11)
    path = store.root / "w" / "v1.qcow2"
    assert sealed.sealed and sealed.sha256 == sha256_of(path)
    assert sealed.size == path.stat().st_size
    assert store.manifest("w").top == sealed
    assert store.verify("w").ok
    assert sv.seal_top(store, "w") == sealed  # a repeat changes nothing
    qemu_io_write(path, 0x22, 0, 4096)
    assert not store.verify("w").ok
    with pytest.raises(StoreError, match="sealed file v1.qcow2 of vDisk w has changed"):
        sv.seal_top(store, "w")


def test_seal_refuses_a_corrupt_file(store):
    entry = sv.open_delta(store, "w", "v1.qcow2", 1)
    path = store.root / "w" / entry.name
    with open(path, "r+b") as fh:  # break the qcow2 header's L1 table offset
        fh.seek(40)
        fh.write(b"\xff" * 8)
    before = manifest_text(store)
    with pytest.raises(qemu_img.QemuImgError):
        sv.seal_top(store, "w")
    assert manifest_text(store) == before


def test_seal_frees_clusters_a_crash_leaked(store):
    entry = sv.open_delta(store, "w", "v1.qcow2", 1)
    path = store.root / "w" / entry.name
    qemu_io_write(path, 0x61, 0, 65536)
    leak_one_cluster(path)
    check = ["qemu-img", "check", "-f", "qcow2", str(path)]
    assert subprocess.run(check, capture_output=True).returncode == 3  # leaks only
    sealed = sv.seal_top(store, "w")
    assert subprocess.run(check, capture_output=True).returncode == 0
    assert sealed.sha256 == sha256_of(path)  # the hash is of the repaired file


def test_unseal_and_drop_never_touch_the_base(store):
    with pytest.raises(StoreError, match="cannot be unsealed"):
        sv.unseal_top(store, "w")
    with pytest.raises(StoreError, match="only its base"):
        sv.seal_top(store, "w")
    with pytest.raises(StoreError, match="only its base"):
        sv.drop_top(store, "w")
    add_sealed(store, 1, 0x11)
    opened = sv.unseal_top(store, "w")
    assert not opened.sealed and not store.manifest("w").top.sealed
    assert sv.unseal_top(store, "w") == opened
    dropped = sv.drop_top(store, "w")
    assert dropped.name == "v1.qcow2"
    assert sorted(n for n in os.listdir(store.root / "w") if not n.startswith(".chunks-")) == [
        "base.raw",
        "manifest.json",
    ]
    assert len(store.manifest("w").files) == 1


@pytest.fixture
def chain(store, tmp_path):
    """base + v1..v4 sealed; flat copies of each version's content before merging."""
    for number in range(1, 5):
        add_sealed(store, number, 0x10 + number)
    flats = {
        n: flat_copy(store.root / "w" / f"v{n}.qcow2", tmp_path / f"flat{n}.raw")
        for n in range(1, 5)
    }
    return store, flats


def test_fold_updates_keeps_content_and_the_files_above(chain):
    store, flats = chain
    above = store.manifest("w").files[4]
    entry, retired = sv.fold(store, "w", "v3.qcow2", new_base=False, retired_at=AT)
    directory = store.root / "w"
    assert (entry.name, entry.parent, entry.version) == ("v3.qcow2", "base.raw", 3)
    assert backing_of(directory / "v3.qcow2") == ("base.raw", "raw")
    assert entry.sha256 == sha256_of(directory / "v3.qcow2")
    assert qemu_img.compare(directory / "v3.qcow2", flats[3])
    assert qemu_img.compare(directory / "v4.qcow2", flats[4])
    manifest = store.manifest("w")
    assert [f.name for f in manifest.files] == ["base.raw", "v3.qcow2", "v4.qcow2"]
    assert manifest.files[2] == above  # untouched: same backing name, same hash
    assert [(r.name, r.version, r.retired_at) for r in retired] == [
        ("v1.qcow2", 1, AT),
        ("v2.qcow2", 2, AT),
    ]
    assert manifest.retired == retired
    assert (directory / "v1.qcow2").exists() and (directory / "v2.qcow2").exists()
    assert store.verify("w").ok
    assert not [n for n in os.listdir(directory) if n.startswith(".") and ".chunks-" not in n]
    assert_qemu_clean(directory)


def test_fold_new_base_writes_a_standalone_qcow2(chain):
    store, flats = chain
    entry, retired = sv.fold(store, "w", "v2.qcow2", new_base=True, retired_at=AT)
    directory = store.root / "w"
    assert entry.parent is None and entry.format == "qcow2"
    assert backing_of(directory / "v2.qcow2") == (None, None)
    for number in (2, 3, 4):
        assert qemu_img.compare(directory / f"v{number}.qcow2", flats[number])
    assert [r.name for r in retired] == ["base.raw", "v1.qcow2"]
    manifest = store.manifest("w")
    assert [f.name for f in manifest.files] == ["v2.qcow2", "v3.qcow2", "v4.qcow2"]
    assert manifest.size == SIZE
    assert store.verify("w").ok
    assert_qemu_clean(directory)


def test_fold_refusals_change_nothing(chain, monkeypatch):
    store, _ = chain
    before = (listing(store), manifest_text(store))
    with pytest.raises(StoreError, match="nothing under"):
        sv.fold(store, "w", "v1.qcow2", new_base=False, retired_at=AT)
    with pytest.raises(StoreError, match="not a sealed file"):
        sv.fold(store, "w", "v9.qcow2", new_base=False, retired_at=AT)

    def broken(*args, **kwargs):
        raise qemu_img.QemuImgError("qemu-img rebase failed: disk full")

    monkeypatch.setattr(qemu_img, "rebase", broken)
    with pytest.raises(qemu_img.QemuImgError):
        sv.fold(store, "w", "v4.qcow2", new_base=False, retired_at=AT)
    assert (listing(store), manifest_text(store)) == before


def test_purge_deletes_only_what_is_not_needed(chain):
    store, _ = chain
    sv.fold(store, "w", "v4.qcow2", new_base=False, retired_at=AT)
    assert sv.purge_retired(store, "w", lambda r: r.version == 2) == ["v1.qcow2", "v3.qcow2"]
    assert [r.name for r in store.manifest("w").retired] == ["v2.qcow2"]
    assert not (store.root / "w" / "v1.qcow2").exists()
    assert (store.root / "w" / "v2.qcow2").exists()
    assert sv.purge_retired(store, "w", lambda r: True) == []
    assert sv.purge_retired(store, "w", lambda r: False) == ["v2.qcow2"]
    assert "retired" not in json.loads(manifest_text(store))
    assert listed(store.root / "w") == ["base.raw", "manifest.json", "v4.qcow2"]


@pytest.mark.parametrize("fmt", sv.EXPORT_FORMATS)
def test_export_flat_every_format(chain, tmp_path, fmt):
    store, flats = chain
    out = tmp_path / f"out.{fmt}"
    size = sv.export_flat(store, "w", "v3.qcow2", fmt, out)
    assert size == out.stat().st_size
    assert qemu_img.info(out)["format"] == fmt
    assert qemu_img.compare(out, flats[3])
    assert backing_of(out) == (None, None)


def test_export_flat_refusals(chain, tmp_path):
    store, _ = chain
    (tmp_path / "taken.raw").write_bytes(b"keep")
    with pytest.raises(VdiskExists):
        sv.export_flat(store, "w", "v1.qcow2", "raw", tmp_path / "taken.raw")
    with pytest.raises(StoreError, match="unknown export format"):
        sv.export_flat(store, "w", "v1.qcow2", "vdi", tmp_path / "x.vdi")
    with pytest.raises(StoreError, match="not in vDisk w's chain"):
        sv.export_flat(store, "w", "v9.qcow2", "raw", tmp_path / "x.raw")
    assert (tmp_path / "taken.raw").read_bytes() == b"keep"
    assert not list(tmp_path.glob(".export-*")) and not (tmp_path / "x.vdi").exists()


def test_remove_leftovers_clears_temp_version_files(store):
    (store.root / "w" / ".merge-0123456789ab-v1.qcow2").write_bytes(b"x")
    (store.root / "w" / ".new-0123456789ab-v2.qcow2").write_bytes(b"x")
    removed = store.remove_leftovers()
    assert sorted(removed) == ["w/.merge-0123456789ab-v1.qcow2", "w/.new-0123456789ab-v2.qcow2"]
    assert sorted(n for n in os.listdir(store.root / "w") if not n.startswith(".chunks-")) == [
        "base.raw",
        "manifest.json",
    ]
