"""The manifest follows the farm's chain (`adopt_chain`), and a drifted copy
leaves service (`quarantine`): real files in a real store directory."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime

import pytest

from vdfarm.store.errors import InvalidName, ManifestChanged, ManifestError, StoreError
from vdfarm.store.manifest import Manifest, ManifestFile, RetiredFile, write_manifest
from vdfarm.store.replica_files import QUARANTINE_DIR, adopt_chain, quarantine
from vdfarm.store.store import Store
from vdfarm.store.versions import purge_retired

AT = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    return Store(root)


def put(store, vdisk, name, content):
    directory = store.root / vdisk
    directory.mkdir(exist_ok=True)
    (directory / name).write_bytes(content)


def entry(name, content, parent=None, version=None, fmt="qcow2"):
    return ManifestFile(
        name=name,
        format=fmt,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        parent=parent,
        version=version,
    )


BASE, V1, V2, V3 = b"base" * 100, b"one" * 10, b"two" * 20, b"three" * 30


def chain(store, vdisk="w"):
    """Files base.raw, v1, v2 on disk and in the manifest."""
    for name, content in (("base.raw", BASE), ("v1.qcow2", V1), ("v2.qcow2", V2)):
        put(store, vdisk, name, content)
    files = (
        entry("base.raw", BASE, fmt="raw", version=0),
        entry("v1.qcow2", V1, "base.raw", 1),
        entry("v2.qcow2", V2, "v1.qcow2", 2),
    )
    write_manifest(store.root / vdisk, Manifest(vdisk=vdisk, files=files, virtual_size=400))
    return files


def manifest_bytes(store, vdisk="w"):
    path = store.root / vdisk / "manifest.json"
    return path.read_bytes() if path.exists() else None


def test_adopt_makes_the_manifest_of_a_vdisk_new_here(store):
    put(store, "w", "base.raw", BASE)
    put(store, "w", "v1.qcow2", V1)
    files = [entry("base.raw", BASE, fmt="raw", version=0), entry("v1.qcow2", V1, "base.raw", 1)]
    made = adopt_chain(store, "w", files, 400, AT)
    assert store.manifest("w") == made
    assert made.files == tuple(files) and made.retired == () and made.virtual_size == 400
    assert [m.vdisk for m in store.scan()] == ["w"]


def test_adopt_retires_what_left_the_chain(store):
    base, v1, v2 = chain(store)
    put(store, "w", "v3.qcow2", V3)
    merged = entry("v3.qcow2", V3, "base.raw", 3)
    made = adopt_chain(store, "w", [base, merged], 400, AT)
    assert [f.name for f in made.files] == ["base.raw", "v3.qcow2"]
    assert made.retired == (RetiredFile("v1.qcow2", 1, AT), RetiredFile("v2.qcow2", 2, AT))
    assert (store.root / "w" / "v1.qcow2").exists()  # kept until no session reads it
    assert purge_retired(store, "w", lambda _: False) == ["v1.qcow2", "v2.qcow2"]
    assert not (store.root / "w" / "v1.qcow2").exists()


def test_adopt_refuses_a_manifest_that_changed_since_the_decision(store):
    base, v1, v2 = chain(store)
    seen = store.manifest("w")
    put(store, "w", "v3.qcow2", V3)  # a seal here: the manifest gets v3 first
    sealed = entry("v3.qcow2", V3, "v2.qcow2", 3)
    write_manifest(store.root / "w", Manifest(vdisk="w", files=(base, v1, v2, sealed)))
    before = manifest_bytes(store)
    with pytest.raises(ManifestChanged, match="manifest of vDisk w changed"):
        adopt_chain(store, "w", [base, v1, v2], 400, AT, seen)  # the older chain
    assert manifest_bytes(store) == before  # v3 neither dropped nor retired
    put(store, "x", "base.raw", BASE)
    with pytest.raises(ManifestChanged):
        adopt_chain(store, "x", [base], 400, AT, seen)  # expected a manifest, there is none
    made = adopt_chain(store, "w", [base, v1, v2, sealed], 400, AT, store.manifest("w"))
    assert made.files[-1] == sealed


def test_a_retired_file_back_in_the_chain_is_not_retired_any_more(store):
    base, v1, v2 = chain(store)
    adopt_chain(store, "w", [base], 400, AT)
    made = adopt_chain(store, "w", [base, v1], 400, AT)
    assert made.retired == (RetiredFile("v2.qcow2", 2, AT),)


@pytest.mark.parametrize(
    ("files", "error", "message"),
    [
        (lambda b, v1, v2: [], ManifestError, "at least its base"),
        (lambda b, v1, v2: [b, v2], ManifestError, "parent must be 'base.raw'"),
        (
            lambda b, v1, v2: [b, entry("v9.qcow2", V1, "base.raw", 9)],
            StoreError,
            "v9.qcow2 of vDisk w is not here",
        ),
        (
            lambda b, v1, v2: [b, entry("v1.qcow2", V1 + b"x", "base.raw", 1)],
            StoreError,
            "has 30 bytes, not 31",
        ),
        (
            lambda b, v1, v2: [b, ManifestFile("v1.qcow2", "qcow2", None, None, "base.raw")],
            StoreError,
            "not sealed",
        ),
    ],
)
def test_adopt_refuses_a_bad_chain_and_writes_nothing(store, files, error, message):
    base, v1, v2 = chain(store)
    before = manifest_bytes(store)
    with pytest.raises(error, match=message):
        adopt_chain(store, "w", files(base, v1, v2), 400, AT)
    assert manifest_bytes(store) == before


def test_adopt_never_retires_an_open_file(store):
    base, v1, v2 = chain(store)
    open_top = ManifestFile("v3.qcow2", "qcow2", None, None, "v2.qcow2", 3)
    write_manifest(store.root / "w", Manifest("w", (base, v1, v2, open_top)))
    before = manifest_bytes(store)
    with pytest.raises(StoreError, match="open file v3.qcow2"):
        adopt_chain(store, "w", [base, v1, v2], 400, AT)
    assert manifest_bytes(store) == before


def test_adopt_refuses_a_link_for_a_file(store, tmp_path):
    put(store, "w", "base.raw", BASE)
    (tmp_path / "elsewhere").write_bytes(V1)
    (store.root / "w" / "v1.qcow2").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="not a regular file"):
        adopt_chain(
            store,
            "w",
            [entry("base.raw", BASE, fmt="raw"), entry("v1.qcow2", V1, "base.raw")],
            None,
            AT,
        )
    assert manifest_bytes(store) is None


def test_quarantine_takes_a_file_and_those_above_it_out_of_the_chain(store):
    chain(store)
    (store.root / "w" / ".chunks-v1.qcow2.json").write_text("{}")
    moved = quarantine(store, "w", "v1.qcow2", AT)
    assert moved == store.root / QUARANTINE_DIR / "w" / "v1.qcow2.20300102T030405.678901Z"
    assert moved.read_bytes() == V1
    for directory in (moved.parent, moved.parent.parent):
        assert directory.stat().st_mode & 0o777 == 0o700
    manifest = store.manifest("w")
    assert [f.name for f in manifest.files] == ["base.raw"]
    assert manifest.retired == (RetiredFile("v2.qcow2", 2, AT),)
    assert (store.root / "w" / "v2.qcow2").read_bytes() == V2
    assert not (store.root / "w" / "v1.qcow2").exists()
    assert not (store.root / "w" / ".chunks-v1.qcow2.json").exists()
    assert [m.vdisk for m in store.scan()] == ["w"]


def test_quarantine_of_the_base_ends_the_vdisk_here_but_keeps_its_files(store):
    chain(store)
    quarantine(store, "w", "base.raw", AT)
    assert not (store.root / "w" / "manifest.json").exists()
    assert sorted(p.name for p in (store.root / "w").iterdir()) == ["v1.qcow2", "v2.qcow2"]
    assert store.scan() == []
    assert not store.contains("w")


def test_quarantine_of_a_vanished_file_still_drops_it(store):
    chain(store)
    os.unlink(store.root / "w" / "v2.qcow2")
    assert quarantine(store, "w", "v2.qcow2", AT) is None
    assert [f.name for f in store.manifest("w").files] == ["base.raw", "v1.qcow2"]


def test_quarantine_of_a_retired_file_forgets_it(store):
    base, v1, v2 = chain(store)
    adopt_chain(store, "w", [base, v1], 400, AT)
    quarantine(store, "w", "v2.qcow2", AT)
    manifest = store.manifest("w")
    assert manifest.retired == () and [f.name for f in manifest.files] == ["base.raw", "v1.qcow2"]


def test_two_quarantines_of_a_name_keep_both(store):
    chain(store)
    first = quarantine(store, "w", "v2.qcow2", AT)
    put(store, "w", "v2.qcow2", b"again")
    second = quarantine(store, "w", "v2.qcow2", AT.replace(microsecond=1))
    assert first != second and first.read_bytes() == V2 and second.read_bytes() == b"again"


def test_quarantine_refuses_a_planted_link(store, tmp_path):
    chain(store)
    before = manifest_bytes(store)
    (tmp_path / "elsewhere").mkdir()
    (store.root / QUARANTINE_DIR).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="cannot quarantine"):
        quarantine(store, "w", "v2.qcow2", AT)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert manifest_bytes(store) == before


@pytest.mark.parametrize(
    ("vdisk", "name"), [("w", "../x"), ("w", ".chunks"), ("../w", "v1"), ("w", "manifest.json")]
)
def test_quarantine_names_are_plain(store, vdisk, name):
    chain(store)
    before = manifest_bytes(store)
    with pytest.raises(InvalidName):
        quarantine(store, vdisk, name, AT)
    assert manifest_bytes(store) == before
    assert json.loads(before)["vdisk"] == "w"
