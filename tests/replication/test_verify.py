"""Drift found in a real store directory leaves service (`find_drift`,
`quarantine_drifted`), unless the file's manifest entry changed while it
was hashed: a version reopened (or sealed again) here is not drift."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from vdfarm.replication.drift import find_drift
from vdfarm.replication.verify import quarantine_drifted
from vdfarm.store.manifest import Manifest, ManifestFile, write_manifest
from vdfarm.store.replica_files import QUARANTINE_DIR
from vdfarm.store.store import Store

AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
BASE, V1 = b"base" * 1000, b"one" * 100


def sealed(name: str, content: bytes, parent: str | None, version: int, fmt: str) -> ManifestFile:
    return ManifestFile(
        name=name,
        format=fmt,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        parent=parent,
        version=version,
    )


@pytest.fixture
def store(tmp_path) -> Store:
    root = tmp_path / "store"
    (root / "w").mkdir(parents=True, mode=0o700)
    (root / "w" / "base.raw").write_bytes(BASE)
    (root / "w" / "v1.qcow2").write_bytes(V1)
    files = (
        sealed("base.raw", BASE, None, 0, "raw"),
        sealed("v1.qcow2", V1, "base.raw", 1, "qcow2"),
    )
    write_manifest(root / "w", Manifest(vdisk="w", files=files, virtual_size=len(BASE)))
    return Store(root)


def test_a_changed_sealed_file_is_found_and_quarantined(store):
    (store.root / "w" / "v1.qcow2").write_bytes(b"ONE" * 100)  # same size, other bytes
    assert find_drift(store, False, {"w"}) == []  # sizes alone see nothing
    [drift] = find_drift(store, True, {"w"})
    assert (drift.file_name, drift.version) == ("v1.qcow2", 1) and "sha256" in drift.why
    [gone] = quarantine_drifted(store, [drift], AT)
    assert gone.moved_to is not None and QUARANTINE_DIR in str(gone.moved_to)
    assert [f.name for f in store.manifest("w").files] == ["base.raw"]


def test_a_file_reopened_while_it_was_hashed_is_left_alone(store):
    (store.root / "w" / "v1.qcow2").write_bytes(
        b"ONE" * 100
    )  # a device writes the reopened version
    [drift] = find_drift(store, True, {"w"})
    manifest = store.manifest("w")
    reopened = replace(manifest.files[1], size=None, sha256=None)  # `version revert` meanwhile
    write_manifest(store.root / "w", replace(manifest, files=(manifest.files[0], reopened)))
    assert quarantine_drifted(store, [drift], AT) == []
    assert (store.root / "w" / "v1.qcow2").exists()
    assert store.manifest("w").files[1] == reopened


def test_a_file_sealed_again_while_it_was_hashed_is_left_alone(store):
    (store.root / "w" / "v1.qcow2").write_bytes(b"TWO" * 100)
    [drift] = find_drift(store, True, {"w"})
    manifest = store.manifest("w")
    resealed = sealed("v1.qcow2", b"TWO" * 100, "base.raw", 1, "qcow2")  # revert, write, promote
    write_manifest(store.root / "w", replace(manifest, files=(manifest.files[0], resealed)))
    assert quarantine_drifted(store, [drift], AT) == []
    assert find_drift(store, True, {"w"}) == []
