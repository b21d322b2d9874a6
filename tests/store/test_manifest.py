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
    manifest = Manifest.from_dict(
        {
            "format_version": 1,
            "vdisk": "w",
            "files": [
                {"name": "base.raw", "format": "raw", "size": 10, "sha256": SHA, "parent": None},
                {
                    "name": "v1.qcow2",
                    "format": "qcow2",
                    "size": 10,
                    "sha256": SHA,
                    "parent": "base.raw",
                },
            ],
        }
    )
    assert manifest.top.name == "v1.qcow2"


@pytest.mark.parametrize(
    "overrides",
    [
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
    ],
)
def test_bad_file_entries_are_refused(overrides):
    with pytest.raises(ManifestError):
        Manifest.from_dict(good_dict(**overrides))


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"format_version": 2, "vdisk": "w", "files": []},
        {"format_version": 1, "vdisk": "bad name", "files": good_dict()["files"]},
        {"format_version": 1, "vdisk": "w", "files": []},
    ],
)
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


def chain_dict(top_overrides=None, **extra):
    data = good_dict()
    top = {
        "name": "v1.qcow2",
        "format": "qcow2",
        "size": None,
        "sha256": None,
        "parent": "base.raw",
        "version": 1,
    }
    top.update(top_overrides or {})
    data["files"].append(top)
    data.update(extra)
    return data


def test_versions_unsealed_top_and_retired_round_trip(tmp_path):
    retired = [{"name": "v0.qcow2", "version": 0, "retired_at": "2030-01-01T00:00:00+00:00"}]
    manifest = Manifest.from_dict(chain_dict(retired=retired, virtual_size=4096))
    assert not manifest.top.sealed and manifest.files[0].sealed
    assert manifest.top.version == 1 and manifest.files[0].version is None
    assert manifest.size == 4096 and manifest.file("v1.qcow2") == manifest.top
    assert manifest.file("nope") is None
    assert [r.name for r in manifest.retired] == ["v0.qcow2"]
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert json.loads((tmp_path / "manifest.json").read_text()) == chain_dict(
        retired=retired, virtual_size=4096
    )


@pytest.mark.parametrize(
    "data",
    [
        good_dict(sha256=None, size=None),  # the base is never unsealed
        chain_dict({"sha256": SHA, "size": None}),
        chain_dict({"sha256": None, "size": 10}),
        chain_dict({"version": -1}),
        chain_dict({"version": "1"}),
        chain_dict(virtual_size=-1),
        chain_dict(retired="v0.qcow2"),
        chain_dict(
            retired=[{"name": "v1.qcow2", "version": 1, "retired_at": "2030-01-01T00:00:00+00:00"}]
        ),  # still in the chain
        chain_dict(
            retired=[{"name": "../x", "version": 1, "retired_at": "2030-01-01T00:00:00+00:00"}]
        ),
        chain_dict(retired=[{"name": "v0.qcow2", "version": 0, "retired_at": "yesterday"}]),
        chain_dict(
            retired=[{"name": "v0.qcow2", "version": 0, "retired_at": "2030-01-01T00:00:00"}]
        ),  # no zone
    ],
)
def test_bad_version_entries_are_refused(data):
    with pytest.raises(ManifestError):
        Manifest.from_dict(data)


def test_only_the_top_may_be_unsealed():
    data = chain_dict()
    data["files"].append(
        {
            "name": "v2.qcow2",
            "format": "qcow2",
            "size": 1,
            "sha256": SHA,
            "parent": "v1.qcow2",
            "version": 2,
        }
    )
    with pytest.raises(ManifestError, match="only a top file"):
        Manifest.from_dict(data)
