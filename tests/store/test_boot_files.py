"""Boot files in a real store directory: copied in from a source opened
once (hashed, named by content, not listed), listed, kept or removed,
checked by verify, dropped from the manifest by a quarantine or an adopt,
and the manifest rules for them."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime

import pytest

from tests.store.replica_helpers import tmpfs
from vdfarm.store import boot_files
from vdfarm.store.boot_files import BadBootSource, copy_in, open_boot_source
from vdfarm.store.errors import ManifestError, StoreError, StoreFull
from vdfarm.store.manifest import (
    BootFile,
    Manifest,
    ManifestFile,
    read_manifest,
    write_manifest,
)
from vdfarm.store.replica_files import adopt_chain, quarantine
from vdfarm.store.store import Store

AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
BASE = b"base" * 128
KERNEL = b"MZ kernel bytes " * 1000
INITRD = b"\x1f\x8b initramfs " * 3000


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    (root / "w").mkdir(parents=True, mode=0o700)
    (root / "w" / "base.raw").write_bytes(BASE)
    base = ManifestFile("base.raw", "raw", len(BASE), hashlib.sha256(BASE).hexdigest())
    write_manifest(root / "w", Manifest(vdisk="w", files=(base,)))
    return Store(root)


def source(tmp_path, kind, data, name=None):
    path = tmp_path / (name or kind)
    path.write_bytes(data)
    return open_boot_source(kind, path)


def boot_file(kind, data):
    return BootFile(kind=kind, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def copied(store, tmp_path, kind, data):
    opened = source(tmp_path, kind, data)
    try:
        return copy_in(store, "w", opened)
    finally:
        opened.close()


def test_copy_in_hashes_names_by_content_and_lists_nothing(store, tmp_path):
    entry = copied(store, tmp_path, "kernel", KERNEL)
    assert entry == boot_file("kernel", KERNEL)
    assert entry.name == f"kernel-{entry.sha256}"
    assert (store.root / "w" / entry.name).read_bytes() == KERNEL
    assert store.manifest("w").boot_files == ()  # the caller lists it
    assert sorted(os.listdir(store.root / "w")) == sorted(
        ["base.raw", "manifest.json", entry.name]
    )  # no temporary left
    again = copied(store, tmp_path, "kernel", KERNEL)  # the same bytes: the same file
    assert again == entry


def test_list_keep_and_discard(store, tmp_path):
    kernel = copied(store, tmp_path, "kernel", KERNEL)
    initrd = copied(store, tmp_path, "initrd", INITRD)
    boot_files.list_boot_files(store, "w", [kernel, initrd, kernel])
    assert store.manifest("w").boot_files == (kernel, initrd)
    assert boot_files.held_boot_file(store, "w", kernel.name) == store.root / "w" / kernel.name
    assert boot_files.keep_boot_files(store, "w", {kernel.name}) == [initrd.name]
    assert store.manifest("w").boot_files == (kernel,)
    assert not (store.root / "w" / initrd.name).exists()
    with pytest.raises(StoreError, match="holds no boot file"):
        boot_files.held_boot_file(store, "w", initrd.name)
    other = copied(store, tmp_path, "initrd", INITRD)  # copied, never listed
    boot_files.discard_unlisted(store, "w", [kernel, other])
    assert (store.root / "w" / kernel.name).exists()  # listed: kept
    assert not (store.root / "w" / other.name).exists()


def test_a_listed_file_must_be_on_disk_with_its_size(store, tmp_path):
    kernel = copied(store, tmp_path, "kernel", KERNEL)
    boot_files.list_boot_files(store, "w", [kernel])
    (store.root / "w" / kernel.name).write_bytes(KERNEL[:-1])
    with pytest.raises(StoreError, match="not a file of"):
        boot_files.held_boot_file(store, "w", kernel.name)
    with pytest.raises(StoreError, match="not on disk"):
        boot_files.list_boot_files(store, "w", [boot_file("initrd", INITRD)])
    assert store.manifest("w").boot_files == (kernel,)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.mkdir(), "is not a regular file"),
        (lambda p: os.mkfifo(p), "is not a regular file"),
        (lambda p: (p.with_name("real").write_bytes(KERNEL), p.symlink_to("real")), "symbolic"),
    ],
    ids=["missing", "empty", "directory", "fifo", "symlink"],
)
def test_bad_sources_are_refused_in_one_line(tmp_path, make, message):
    path = tmp_path / "vmlinuz"
    make(path)
    with pytest.raises(BadBootSource, match=message) as refused:
        open_boot_source("kernel", path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


def test_a_source_that_changes_while_copied_is_refused(store, tmp_path, monkeypatch):
    opened = source(tmp_path, "kernel", KERNEL)
    real_pread = os.pread

    def pread_and_grow(fd, length, offset):  # someone appends during the copy
        if offset == 0 and fd == opened.fd:
            with open(tmp_path / "kernel", "ab") as fh:
                fh.write(b"more")
        return real_pread(fd, length, offset)

    monkeypatch.setattr(boot_files.os, "pread", pread_and_grow)
    with pytest.raises(BadBootSource, match="changed while it was copied"):
        copy_in(store, "w", opened)
    opened.close()
    assert sorted(os.listdir(store.root / "w")) == ["base.raw", "manifest.json"]


def test_a_full_disk_is_store_full_and_leaves_nothing(tmp_path):
    with tmpfs(tmp_path / "small", "1m") as root:
        (root / "w").mkdir()
        (root / "w" / "base.raw").write_bytes(BASE)
        base = ManifestFile("base.raw", "raw", len(BASE), hashlib.sha256(BASE).hexdigest())
        write_manifest(root / "w", Manifest(vdisk="w", files=(base,)))
        opened = source(tmp_path, "initrd", os.urandom(3 << 20))
        with pytest.raises(StoreFull, match="no room for the initrd file of vDisk w"):
            copy_in(Store(root), "w", opened)
        opened.close()
        assert sorted(os.listdir(root / "w")) == ["base.raw", "manifest.json"]


def test_verify_checks_boot_files(store, tmp_path):
    kernel = copied(store, tmp_path, "kernel", KERNEL)
    boot_files.list_boot_files(store, "w", [kernel])
    assert store.verify("w").ok
    with open(store.root / "w" / kernel.name, "r+b") as fh:
        fh.write(b"XX")
    assert store.verify("w").problems == (f"{kernel.name} does not match its sha256",)


def test_quarantine_and_adopt_take_boot_files_out(store, tmp_path):
    kernel = copied(store, tmp_path, "kernel", KERNEL)
    initrd = copied(store, tmp_path, "initrd", INITRD)
    boot_files.list_boot_files(store, "w", [kernel, initrd])
    moved = quarantine(store, "w", kernel.name, AT)
    assert moved is not None and moved.read_bytes() == KERNEL
    manifest = store.manifest("w")
    assert manifest.boot_files == (initrd,) and [f.name for f in manifest.files] == ["base.raw"]
    # an adopt without boot files keeps them; with, they become exactly those
    adopt_chain(store, "w", list(manifest.files), None, AT)
    assert store.manifest("w").boot_files == (initrd,)
    adopt_chain(store, "w", list(manifest.files), None, AT, boot_files=[])
    assert store.manifest("w").boot_files == ()
    assert not (store.root / "w" / initrd.name).exists()
    with pytest.raises(StoreError, match="is not on disk"):
        adopt_chain(store, "w", list(manifest.files), None, AT, boot_files=[kernel])


def test_the_manifest_keeps_and_checks_boot_files(store, tmp_path):
    kernel = copied(store, tmp_path, "kernel", KERNEL)
    boot_files.list_boot_files(store, "w", [kernel])
    data = json.loads((store.root / "w" / "manifest.json").read_text())
    assert data["boot_files"] == [
        {"name": kernel.name, "kind": "kernel", "size": len(KERNEL), "sha256": kernel.sha256}
    ]
    assert read_manifest(store.root / "w").boot_files == (kernel,)
    bad = [
        {**data["boot_files"][0], "name": f"initrd-{kernel.sha256}"},  # not its name
        {**data["boot_files"][0], "kind": "bios"},
        {**data["boot_files"][0], "size": 0},
        {**data["boot_files"][0], "sha256": "../../etc/passwd"},
    ]
    for item in bad:
        with pytest.raises(ManifestError):
            Manifest.from_dict({**data, "boot_files": [item]})
    with pytest.raises(ManifestError, match="repeated"):
        Manifest.from_dict({**data, "boot_files": data["boot_files"] * 2})
    without = {k: v for k, v in data.items() if k != "boot_files"}
    assert "boot_files" not in Manifest.from_dict(without).to_dict()  # old manifests as before


def test_copies_of_two_attaches_at_once_do_not_clash(store, tmp_path):
    sources = [source(tmp_path, "kernel", KERNEL, f"k{i}") for i in range(4)]
    results: list = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(copy_in(store, "w", s))) for s in sources
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for s in sources:
        s.close()
    assert results == [boot_file("kernel", KERNEL)] * 4
    assert (store.root / "w" / results[0].name).read_bytes() == KERNEL
