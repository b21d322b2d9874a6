"""The local store against real qemu-img-made images of every accepted format."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from vdfarm.store import qemu_img
from vdfarm.store.errors import (
    InvalidName,
    StoreError,
    UnsupportedImage,
    VdiskExists,
    VdiskMissing,
)
from vdfarm.store.store import Store, sha256_of

SIZE = 8 << 20


def make_source(directory, fmt, size=SIZE):
    """An image of FMT with two written patterns and holes elsewhere."""
    raw = directory / "pattern.raw"
    with open(raw, "wb") as fh:
        fh.truncate(size)
        fh.seek(0)
        fh.write(bytes(range(256)) * 256)
        fh.seek(size // 2 + 4096)
        fh.write(b"vdfarm" * 1000)
    if fmt == "raw":
        return raw
    out = directory / f"source.{fmt}"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(out)],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    return out


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    return Store(root)


def listing(store):
    return sorted(os.listdir(store.root))


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vpc", "vhdx", "vmdk"])
def test_import_every_format_is_identical_to_source(store, tmp_path, fmt):
    source = make_source(tmp_path, fmt)
    manifest = store.import_image("disk", source)
    stored = store.path_of("disk")
    assert stored == store.root / "disk" / "base.raw"
    assert qemu_img.compare(stored, source) is True
    assert manifest.top.format == "raw"
    assert manifest.top.size == stored.stat().st_size == qemu_img.info(source)["virtual-size"]
    assert manifest.top.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert listing(store) == ["disk"]
    assert sorted(n for n in os.listdir(store.root / "disk") if not n.startswith(".chunks-")) == [
        "base.raw",
        "manifest.json",
    ]


def test_import_keeps_holes(store, tmp_path):
    source = make_source(tmp_path, "qcow2", size=64 << 20)
    store.import_image("sparse", source)
    stored = store.path_of("sparse")
    assert stored.stat().st_size == 64 << 20
    assert stored.stat().st_blocks * 512 < 4 << 20


def test_manifest_holds_no_store_path(store, tmp_path):
    store.import_image("disk", make_source(tmp_path, "raw"))
    text = (store.root / "disk" / "manifest.json").read_text()
    assert str(store.root) not in text
    assert json.loads(text)["files"][0]["name"] == "base.raw"


def test_moved_store_still_serves(store, tmp_path):
    store.import_image("disk", make_source(tmp_path, "raw"))
    moved = tmp_path / "elsewhere"
    os.rename(store.root, moved)
    again = Store(moved)
    assert again.verify("disk").ok
    assert again.path_of("disk") == moved / "disk" / "base.raw"


def test_refuses_backing_file_source(store, tmp_path):
    base = make_source(tmp_path, "qcow2")
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)],
        check=True,
    )
    with pytest.raises(UnsupportedImage, match="backing file"):
        store.import_image("disk", overlay)
    assert listing(store) == []


def test_refuses_unsupported_format(store, tmp_path):
    vdi = tmp_path / "x.vdi"
    qemu_img.create(vdi, "vdi", 1 << 20)
    with pytest.raises(UnsupportedImage, match="unsupported format 'vdi'"):
        store.import_image("disk", vdi)
    assert listing(store) == []


@pytest.mark.parametrize("content", [b"", b"hello\n"])
def test_refuses_files_that_are_not_disks(store, tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(UnsupportedImage):
        store.import_image("disk", path)
    assert listing(store) == []


def test_refuses_missing_source_and_bad_name(store, tmp_path):
    with pytest.raises(UnsupportedImage, match="not a readable file"):
        store.import_image("disk", tmp_path / "nope.raw")
    with pytest.raises(InvalidName):
        store.import_image("../evil", make_source(tmp_path, "raw"))
    assert listing(store) == []


def test_refuses_existing_name_and_keeps_the_old_one(store, tmp_path):
    source = make_source(tmp_path, "raw")
    first = store.import_image("disk", source)
    other = tmp_path / "other.raw"
    other.write_bytes(b"\7" * 4096)
    with pytest.raises(VdiskExists):
        store.import_image("disk", other)
    assert store.manifest("disk") == first
    assert listing(store) == ["disk"]


def test_failed_convert_leaves_nothing(store, tmp_path, monkeypatch):
    def broken_convert(src, dst, **_):
        dst.write_bytes(b"partial")
        raise qemu_img.QemuImgError("qemu-img convert failed: boom", "boom")

    monkeypatch.setattr(qemu_img, "convert", broken_convert)
    with pytest.raises(qemu_img.QemuImgError):
        store.import_image("disk", make_source(tmp_path, "raw"))
    assert listing(store) == []
    assert store.scan() == []


def test_missing_store_root(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope").import_image("disk", make_source(tmp_path, "raw"))


def test_scan_lists_published_only(store, tmp_path):
    source = make_source(tmp_path, "raw")
    store.import_image("b", source)
    store.import_image("a", source)
    (store.root / ".import-c-123").mkdir()
    (store.root / "broken").mkdir()
    (store.root / "broken" / "manifest.json").write_text("{}")
    (store.root / "stray-file").write_text("x")
    (store.root / "arriving").mkdir()  # a replica copy of a vDisk new here: no manifest yet
    (store.root / "arriving" / ".repl-base.raw").write_bytes(b"x")
    assert [m.vdisk for m in store.scan()] == ["a", "b"]
    assert store.remove_leftovers() == [".import-c-123"]


def test_delete(store, tmp_path):
    store.import_image("disk", make_source(tmp_path, "raw"))
    store.delete("disk")
    assert listing(store) == []
    assert not store.contains("disk")
    with pytest.raises(VdiskMissing):
        store.delete("disk")
    with pytest.raises(VdiskMissing):
        store.path_of("disk")


def test_verify_finds_corruption_and_truncation(store, tmp_path):
    store.import_image("disk", make_source(tmp_path, "raw"))
    assert store.verify("disk").ok
    path = store.path_of("disk")
    with open(path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"X")
    result = store.verify("disk")
    assert not result.ok and "sha256" in result.problems[0]
    os.truncate(path, 4096)
    assert "size" in store.verify("disk").problems[0]
    path.unlink()
    assert "missing" in store.verify("disk").problems[0]


def test_sha256_of_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    data = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
