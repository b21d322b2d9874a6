"""What a crash leaves in the store is removed at start, but never what a
live process is still building; an export is durable before it is reported;
the store's own raw files are never format-probed."""

from __future__ import annotations

import os
import stat

import pytest

from tests.service.helpers import make_raw
from tests.store import hostile
from vdfarm.store import versions as sv
from vdfarm.store.errors import StoreError
from vdfarm.store.store import Store


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    store = Store(root)
    store.import_image("w", make_raw(tmp_path / "src.raw"))
    return store


def test_leftovers_of_a_crashed_import_and_delete_are_removed(store):
    for name in (".import-x-0123456789ab", ".delete-y-0123456789ab"):
        (store.root / name).mkdir()
        (store.root / name / "base.raw").write_bytes(b"\0" * 4096)
    (store.root / "w" / ".new-0123456789ab-v1.qcow2").write_bytes(b"x")
    removed = sorted(store.remove_leftovers())
    assert removed == [
        ".delete-y-0123456789ab",
        ".import-x-0123456789ab",
        "w/.new-0123456789ab-v1.qcow2",
    ]
    assert sorted(os.listdir(store.root)) == ["w"]
    # what stays: the file, its manifest, and the chunk list the import cached for peers
    assert sorted(os.listdir(store.root / "w")) == [
        ".chunks-base.raw.json",
        "base.raw",
        "manifest.json",
    ]
    assert store.verify("w").ok
    assert store.remove_leftovers() == []


def test_leftovers_being_built_by_a_live_process_are_kept(store):
    from vdfarm.store.locking import busy

    live = store.root / ".import-z-0123456789ab"
    live.mkdir()
    temp = store.root / "w" / ".merge-0123456789ab-v1.qcow2"
    temp.write_bytes(b"x")
    with busy(live), busy(store.root / "w"):
        assert store.remove_leftovers() == []
    assert live.is_dir() and temp.is_file()
    assert sorted(store.remove_leftovers()) == [".import-z-0123456789ab", f"w/{temp.name}"]


def test_leftover_names_that_are_symlinks_are_not_followed(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    (store.root / ".import-evil-0123456789ab").symlink_to(outside)
    (store.root / "w" / ".new-0123456789ab-x").symlink_to(outside)
    store.remove_leftovers()
    assert (outside / "keep").read_bytes() == b"keep"


def test_remove_leftovers_on_a_missing_store_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="cannot list the store"):
        Store(tmp_path / "nope").remove_leftovers()


def test_export_is_fsynced_file_then_directory_before_it_returns(store, tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        st = os.fstat(fd)
        synced.append(((st.st_dev, st.st_ino), stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    out = out_dir / "w.qcow2"
    sv.export_flat(store, "w", "base.raw", "qcow2", out)
    file_id, dir_id = os.stat(out), os.stat(out_dir)
    keys = [key for key, _ in synced]
    assert (file_id.st_dev, file_id.st_ino) in keys
    assert ((dir_id.st_dev, dir_id.st_ino), True) in synced
    assert keys.index((file_id.st_dev, file_id.st_ino)) < keys.index((dir_id.st_dev, dir_id.st_ino))


def test_a_raw_base_that_looks_like_qcow2_is_never_probed(tmp_path):
    """A private device wrote a qcow2 header (1 MiB, data file: a host file)
    into its 4 MiB raw base; a new version must still see 4 MiB of raw."""
    store = Store(tmp_path / "store")
    store.root.mkdir()
    store.import_image("p", make_raw(tmp_path / "p.raw", size=4 << 20))
    secret = hostile.host_file(tmp_path / "secret.bin")
    header = hostile.qcow2_with_data_file(tmp_path / "h.qcow2", secret, size=1 << 20)
    with open(store.root / "p" / "base.raw", "r+b") as fh:
        fh.write(header.read_bytes())
    sv.open_delta(store, "p", "v1.qcow2", 1)
    assert store.manifest("p").virtual_size == 4 << 20
