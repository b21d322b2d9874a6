"""Slow store work reports its progress (vdfarm.store.progress): qemu-img's
percentages as fractions, an import's copy and hash, a verify's hash over
every file; a watched qemu-img fails and times out as an unwatched one does."""

from __future__ import annotations

import os

import pytest

from tests.store.test_store import SIZE, make_source
from vdfarm.store import qemu_img
from vdfarm.store.progress import fraction_to_bytes, shifted
from vdfarm.store.qemu_img import Limits, QemuImgError
from vdfarm.store.store import Store


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    return Store(root)


def _rising(values):
    return all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_convert_reports_fractions_up_to_one(tmp_path):
    source = make_source(tmp_path, "qcow2")
    seen = []
    out = tmp_path / "out.raw"
    qemu_img.convert(source, out, src_format="qcow2", on_fraction=seen.append)
    assert qemu_img.compare(source, out)
    assert seen and seen[-1] == 1.0 and _rising(seen)


def test_rebase_reports_fractions(tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(b"\1" * (1 << 20))
    top = tmp_path / "top.qcow2"
    qemu_img.create_overlay(top, "base.raw", "raw")
    other = tmp_path / "other.raw"
    other.write_bytes(b"\2" * (1 << 20))
    seen = []
    qemu_img.rebase(top, "other.raw", "raw", on_fraction=seen.append)
    assert seen and seen[-1] == 1.0
    assert qemu_img.compare(top, base)  # safe mode: the content is unchanged


def test_a_watched_failure_is_one_line(tmp_path):
    seen = []
    with pytest.raises(QemuImgError) as info:
        qemu_img.convert(
            tmp_path / "missing.qcow2",
            tmp_path / "o.raw",
            src_format="qcow2",
            on_fraction=seen.append,
        )
    assert str(info.value).startswith("qemu-img convert failed: ") and "\n" not in str(info.value)
    assert "No such file" in info.value.stderr_line


def test_a_watched_run_is_stopped_at_its_timeout(tmp_path):
    stuck = tmp_path / "stuck.raw"
    os.mkfifo(stuck)  # no writer ever comes: qemu-img waits in open() until killed
    limits = Limits(cpu_seconds=60, address_space=4 << 30, timeout=0.5)
    with pytest.raises(QemuImgError, match="did not finish within 0.5 s"):
        qemu_img.convert(
            stuck, tmp_path / "o.raw", src_format="raw", limits=limits, on_fraction=print
        )


def test_import_reports_the_copy_then_the_hash(store, tmp_path):
    seen = []
    store.import_image("w", make_source(tmp_path, "vhdx"), progress=lambda *a: seen.append(a))
    steps = [step for step, _, _ in seen]
    assert steps == sorted(steps) and set(steps) == {"copy", "hash"}
    for step in ("copy", "hash"):
        done = [d for s, d, _ in seen if s == step]
        assert _rising(done) and done[-1] == SIZE
        assert {t for s, _, t in seen if s == step} == {SIZE}


def test_verify_hashes_every_file_into_one_total(store, tmp_path):
    store.import_image("w", make_source(tmp_path, "raw"))
    seen = []
    assert store.verify("w", lambda *a: seen.append(a)).ok
    assert {(s, t) for s, _, t in seen} == {("hash", SIZE)}
    assert seen[-1] == ("hash", SIZE, SIZE) and _rising([d for _, d, _ in seen])


def test_helpers_scale_and_shift():
    seen = []
    report = fraction_to_bytes(lambda *a: seen.append(a), "copy", 1000)
    for fraction in (0.0, 0.25, 1.0, 1.5, -1.0):
        report(fraction)
    assert seen == [("copy", 0, 1000), ("copy", 250, 1000), ("copy", 1000, 1000)] + [
        ("copy", 1000, 1000),
        ("copy", 0, 1000),
    ]
    seen.clear()
    shifted(lambda *a: seen.append(a), 300, 1000)("hash", 200, 700)
    assert seen == [("hash", 500, 1000)]
