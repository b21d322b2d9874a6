"""The qemu-img wrapper against the real qemu-img."""

from __future__ import annotations

import pytest

from vdfarm.store import qemu_img
from vdfarm.store.qemu_img import QemuImgError


def test_create_info_convert_compare(tmp_path):
    src = tmp_path / "a.qcow2"
    qemu_img.create(src, "qcow2", 1 << 20)
    info = qemu_img.info(src)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 1 << 20
    out = tmp_path / "a.raw"
    qemu_img.convert(src, out, src_format="qcow2")
    assert out.stat().st_size == 1 << 20
    assert qemu_img.compare(src, out) is True


def test_compare_sees_a_difference(tmp_path):
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    a.write_bytes(b"\0" * 4096)
    b.write_bytes(b"\1" * 4096)
    assert qemu_img.compare(a, b) is False


def test_error_carries_first_stderr_line(tmp_path):
    with pytest.raises(QemuImgError) as info:
        qemu_img.info(tmp_path / "missing.img")
    assert "No such file" in info.value.stderr_line
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("qemu-img info failed: ")


def test_relative_name_with_colon_is_a_file_not_a_protocol(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nbd:x").write_bytes(b"\0" * 512)
    assert qemu_img.info("nbd:x")["format"] == "raw"


def test_missing_binary(monkeypatch):
    monkeypatch.setattr(qemu_img, "QEMU_IMG", "/nonexistent/qemu-img")
    with pytest.raises(QemuImgError, match="not installed"):
        qemu_img.run(["--version"])
