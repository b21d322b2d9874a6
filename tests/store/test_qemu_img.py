"""The qemu-img wrapper against the real qemu-img."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.store.leaks import leak_one_cluster
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


def test_overlay_rebase_and_check(tmp_path):
    base = tmp_path / "base.raw"
    qemu_img.create(base, "raw", 1 << 20)
    mid, top = tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    qemu_img.create_overlay(mid, "base.raw", "raw")
    subprocess.run(
        ["qemu-io", "-c", "write -P 7 0 4096", str(mid)], check=True, capture_output=True
    )
    qemu_img.create_overlay(top, "mid.qcow2", "qcow2")
    info = qemu_img.info(top)
    assert (info["backing-filename"], info["backing-filename-format"]) == ("mid.qcow2", "qcow2")
    assert info["virtual-size"] == 1 << 20
    flat = tmp_path / "flat.raw"
    qemu_img.convert(top, flat, src_format="qcow2")
    qemu_img.rebase(top, "base.raw", "raw")
    assert qemu_img.info(top)["backing-filename"] == "base.raw"
    assert qemu_img.compare(top, flat) is True
    qemu_img.check(top, "qcow2")
    qemu_img.check(base, "raw")  # raw has no checks: passes


@pytest.mark.parametrize("name", ["/abs/base.raw", "nbd:host:10809", ".hidden", ""])
def test_backing_names_must_be_plain(tmp_path, name):
    with pytest.raises(QemuImgError, match="plain relative name"):
        qemu_img.create_overlay(tmp_path / "x.qcow2", name, "raw")
    assert not (tmp_path / "x.qcow2").exists()


def test_check_reports_corruption(tmp_path):
    image = tmp_path / "x.qcow2"
    qemu_img.create(image, "qcow2", 1 << 20)
    with open(image, "r+b") as fh:
        fh.seek(40)
        fh.write(b"\xff" * 8)
    with pytest.raises(QemuImgError, match="check failed on x.qcow2"):
        qemu_img.check(image, "qcow2")


def test_check_accepts_leaks_and_repairs_them_when_asked(tmp_path):
    image = tmp_path / "x.qcow2"
    qemu_img.create(image, "qcow2", 1 << 20)
    leak_one_cluster(image)
    plain = ["qemu-img", "check", "-f", "qcow2", str(image)]
    assert subprocess.run(plain, capture_output=True).returncode == 3  # leaks only
    qemu_img.check(image, "qcow2")  # a leak is not corruption
    assert subprocess.run(plain, capture_output=True).returncode == 3  # and nothing changed
    qemu_img.check(image, "qcow2", repair_leaks=True)
    assert subprocess.run(plain, capture_output=True).returncode == 0


def test_address_space_limit_stops_qemu_img_with_one_line(tmp_path):
    image = tmp_path / "a.qcow2"
    qemu_img.create(image, "qcow2", 1 << 20)
    tiny = qemu_img.Limits(cpu_seconds=30, address_space=16 << 20, timeout=60)
    with pytest.raises(QemuImgError) as info:
        qemu_img.info(image, "qcow2", limits=tiny)
    message = str(info.value)
    assert message.startswith("qemu-img info was stopped by SIGABRT (limits: 30 s CPU, 16 MiB")
    assert "\n" not in message and "Traceback" not in message
    assert qemu_img.info(image, "qcow2", limits=qemu_img.INFO_LIMITS)["format"] == "qcow2"


def test_cpu_limit_stops_a_spinning_qemu_img():
    spin = ["bench", "-c", "1000000000", "--image-opts", "driver=null-co,size=1M"]
    with pytest.raises(QemuImgError, match=r"^qemu-img bench was stopped by SIG(XCPU|KILL)"):
        qemu_img.run(spin, limits=qemu_img.Limits(cpu_seconds=1, address_space=1 << 30))


def test_timeout_stops_a_hanging_qemu_img(tmp_path):
    fifo = tmp_path / "fifo"  # opening a FIFO with no writer never returns
    os.mkfifo(fifo)
    limits = qemu_img.Limits(cpu_seconds=30, address_space=1 << 30, timeout=1)
    with pytest.raises(QemuImgError, match=r"^qemu-img info was stopped: .* within 1 s$"):
        qemu_img.info(fifo, "raw", limits=limits)


def test_no_prlimit_means_no_run(monkeypatch, tmp_path):
    monkeypatch.setattr(qemu_img, "PRLIMIT", "/nonexistent/prlimit")
    with pytest.raises(QemuImgError, match="never run on an untrusted image without"):
        qemu_img.info(tmp_path / "x", "raw", limits=qemu_img.INFO_LIMITS)


def test_convert_limits_grow_with_the_size():
    small, big = qemu_img.convert_limits(1 << 20), qemu_img.convert_limits(100 << 30)
    assert small.cpu_seconds < big.cpu_seconds and small.timeout is None
