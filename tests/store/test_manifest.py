"""Manifest rules: relative names only, validated on read, atomic write."""

from __future__ import annotations

import json

import pytest

from vdfarm.store.errors import InvalidName, ManifestError
from vdfarm.store.manifest import (
    Manifest,
    ManifestFile,
    check_vdisk_name,
    read_manifest,
    write_manifest,
)

SHA = "a" * 64


def good_dict(**file_overrides):
    entry = {"name": "base.raw", "format": "raw", "size": 4096, "sha256": SHA, "parent": None}
    entry.update(file_overrides)
    return {"format_version": 1, "vdisk": "win10", "files": [entry]}


def test_round_trip_through_disk(tmp_path):
    manifest = Manifest(vdisk="win10", files=(ManifestFile("base.raw", "raw", 4096, SHA),))
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data == good_dict()
    assert str(tmp_path) not in (tmp_path / "manifest.json").read_text()


def test_top_is_last_file_of_chain():
    manifest = Manifest.from_dict({
        "format_version": 1, "vdisk": "w",
        "files": [
            {"name": "base.raw", "format": "raw", "size": 10, "sha256": SHA, "parent": None},
            {"name": "v1.qcow2", "format": "qcow2", "size": 10, "sha256": SHA,
             "parent": "base.raw"},
        ],
    })
    assert manifest.top.name == "v1.qcow2"


@pytest.mark.parametrize("overrides", [
    {"name": "/abs/base.raw"},
    {"name": "../base.raw"},
    {"name": "sub/base.raw"},
    {"name": ".hidden"},
    {"name": "manifest.json"},
    {"format": "vmdk"},
    {"size": -1},
    {"size": "12"},
    {"sha256": "xyz"},
    {"parent": "other.raw"},
])
def test_bad_file_entries_are_refused(overrides):
    with pytest.raises(ManifestError):
        Manifest.from_dict(good_dict(**overrides))


@pytest.mark.parametrize("data", [
    [],
    {"format_version": 2, "vdisk": "w", "files": []},
    {"format_version": 1, "vdisk": "bad name", "files": good_dict()["files"]},
    {"format_version": 1, "vdisk": "w", "files": []},
])
def test_bad_manifests_are_refused(data):
    with pytest.raises(ManifestError):
        Manifest.from_dict(data)


def test_read_of_missing_or_broken_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("name", ["a", "Win10", "w.1_x-y", "9" * 64])
def test_valid_vdisk_names(name):
    assert check_vdisk_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "a b", "a/b", "x" * 65, "é", None])
def test_invalid_vdisk_names(name):
    with pytest.raises(InvalidName):
        check_vdisk_name(name)
