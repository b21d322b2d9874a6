"""Hostile import sources: every image that names a file on the host is
refused before a byte is copied; raw is raw, whatever it looks like."""

from __future__ import annotations

import os
import struct

import pytest

from tests.store import hostile
from tests.store.hostile import SECRET
from vdfarm.store import qemu_img
from vdfarm.store.errors import UnsupportedImage
from vdfarm.store.store import Store


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    return Store(root)


@pytest.fixture
def secret(tmp_path):
    return hostile.host_file(tmp_path / "host-secret.bin")


def refused(store, source, fmt, match):
    """Import SOURCE as FMT: refused with one line matching MATCH, nothing in the store."""
    with pytest.raises(UnsupportedImage, match=match) as info:
        store.import_image("disk", source, *([fmt] if fmt else []))
    assert "\n" not in str(info.value) and str(source) in str(info.value)
    assert os.listdir(store.root) == []
    return str(info.value)


@pytest.mark.parametrize("fmt", [None, "qcow2"])
def test_qcow2_external_data_file_is_refused(store, tmp_path, secret, fmt):
    source = hostile.qcow2_with_data_file(tmp_path / "ext.qcow2", secret)
    refused(store, source, fmt, "external data file")


def test_data_file_bit_refused_even_when_qemu_img_does_not_report_it(
    store, tmp_path, secret, monkeypatch
):
    source = hostile.qcow2_with_data_file(tmp_path / "ext.qcow2", secret)
    real_info = qemu_img.info

    def quiet_info(*args, **kw):
        info = real_info(*args, **kw)
        info.get("format-specific", {}).get("data", {}).pop("data-file", None)
        return info

    monkeypatch.setattr(qemu_img, "info", quiet_info)
    refused(store, source, "qcow2", "external data file")


def test_qemu_img_info_is_checked_too(store, tmp_path, secret, monkeypatch):
    """Our header check off: the data file qemu-img reports still refuses it."""
    from vdfarm.store import sources

    source = hostile.qcow2_with_data_file(tmp_path / "ext.qcow2", secret)
    monkeypatch.setattr(sources, "check_header", lambda *a: None)
    refused(store, source, "qcow2", "external data file")


@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentFlat"])
@pytest.mark.parametrize("fmt", [None, "vmdk"])
def test_vmdk_with_extent_files_is_refused(store, tmp_path, subformat, fmt):
    source = hostile.vmdk_flat(tmp_path / "flat.vmdk", subformat)
    refused(store, source, fmt, "vmdk|VMDK")


@pytest.mark.parametrize("fmt", [None, "vmdk"])
def test_vmdk_descriptor_naming_a_host_file_is_refused(store, tmp_path, secret, fmt):
    source = hostile.vmdk_descriptor(tmp_path / "desc.vmdk", secret)
    refused(store, source, fmt, "descriptor")


@pytest.mark.parametrize("fmt", [None, "vmdk"])
def test_sparse_vmdk_whose_embedded_descriptor_names_a_host_file_is_refused(
    store, tmp_path, secret, fmt
):
    source = hostile.vmdk_sparse_naming(tmp_path / "sparse.vmdk", secret)
    assert qemu_img.info(source)["format-specific"]["data"]["extents"][0]["filename"] == str(
        secret
    )  # the attack is real: qemu-img would read the host file
    refused(store, source, fmt, "embedded descriptor names other files")


def test_vmdk_extent_reported_by_qemu_img_is_refused(store, tmp_path, monkeypatch):
    """A self-contained vmdk passes; one whose info lists another extent does not."""
    source = tmp_path / "ok.vmdk"
    qemu_img.create(source, "vmdk", 1 << 20)
    real_info = qemu_img.info

    def extra_extent(*args, **kw):
        info = real_info(*args, **kw)
        info["format-specific"]["data"]["extents"].append({"filename": "/etc/shadow"})
        return info

    monkeypatch.setattr(qemu_img, "info", extra_extent)
    refused(store, source, "vmdk", "extents in other files")


@pytest.mark.parametrize("maker", [hostile.qcow2_with_backing, hostile.qcow2_with_data_file])
def test_raw_given_explicitly_is_read_as_raw_bytes(store, tmp_path, secret, maker):
    """A raw disk whose first bytes are a qcow2 header naming a host file is
    imported byte for byte; the host file is never read."""
    header = maker(tmp_path / "header.qcow2", secret)
    source = hostile.raw_looking_like(tmp_path / "disk.raw", header)
    store.import_image("disk", source, "raw")
    stored = store.path_of("disk").read_bytes()
    assert stored == source.read_bytes()
    assert SECRET not in stored


@pytest.mark.parametrize("maker", [hostile.qcow2_with_backing, hostile.qcow2_with_data_file])
def test_raw_looking_like_qcow2_is_refused_when_detected(store, tmp_path, secret, maker):
    header = maker(tmp_path / "header.qcow2", secret)
    source = hostile.raw_looking_like(tmp_path / "disk.raw", header)
    message = refused(store, source, None, "backing file|external data file")
    assert "give the source format raw explicitly" in message


def test_qemu_img_never_probes_a_source_and_runs_under_limits(store, tmp_path, monkeypatch):
    calls = []
    real_run = qemu_img.run

    def recording_run(args, **kw):
        calls.append((args, kw.get("limits")))
        return real_run(args, **kw)

    monkeypatch.setattr(qemu_img, "run", recording_run)
    for fmt in ("raw", "qcow2", "vmdk", "vpc", "vhdx"):
        source = tmp_path / f"s.{fmt}"
        qemu_img.create(source, fmt, 1 << 20)
        calls.clear()
        store.import_image(f"d-{fmt}", source)
        reads = [(a, lim) for a, lim in calls if a[0] in ("info", "convert")]
        assert [a[0] for a, _ in reads] == ["info", "convert"], calls
        for args, limits in reads:
            assert args[args.index("-f") + 1] == fmt
            assert limits is not None
            assert args[-1 if args[0] == "info" else -2].startswith("/dev/fd/")


def test_source_changed_during_the_import_is_refused(store, tmp_path, monkeypatch):
    source = tmp_path / "s.raw"
    hostile.host_file(source)
    real_convert = qemu_img.convert

    def convert_then_tamper(*args, **kw):
        real_convert(*args, **kw)
        with open(source, "r+b") as fh:
            fh.write(b"changed")

    monkeypatch.setattr(qemu_img, "convert", convert_then_tamper)
    refused(store, source, "raw", "changed while it was being imported")


def test_fifo_source_is_refused_without_blocking(store, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(store, fifo, None, "not a regular file")


def test_differencing_vhd_is_refused(store, tmp_path):
    source = tmp_path / "d.vhd"
    qemu_img.create(source, "vpc", 1 << 20)
    data = bytearray(source.read_bytes())
    for start in (0, len(data) - 512):  # both footer copies: disk type differencing
        footer = data[start : start + 512]
        struct.pack_into(">II", footer, 60, 4, 0)
        struct.pack_into(">I", footer, 64, ~sum(footer[:512]) & 0xFFFFFFFF)
        data[start : start + 512] = footer
    source.write_bytes(bytes(data))
    refused(store, source, None, "differencing VHD")


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"QFI\xfb\0\0\0\1", "qcow version 1"),
        (b"QED\0", "'qed'"),
        (b"LUKS\xba\xbe", "'luks'"),
        (b"COWD", "VMDK3"),
        (b"\0" * 64 + struct.pack("<I", 0xBEDA107F), "'vdi'"),
    ],
)
def test_other_formats_are_never_taken_for_raw(store, tmp_path, head, name):
    source = tmp_path / "other.img"
    with open(source, "wb") as fh:
        fh.truncate(1 << 20)
        fh.write(head)
    refused(store, source, None, name)
    # given as raw explicitly, the same bytes are a raw disk
    store.import_image("disk", source, "raw")
    assert store.path_of("disk").read_bytes() == source.read_bytes()


def test_unknown_source_format_is_refused(store, tmp_path):
    source = hostile.host_file(tmp_path / "s.raw")
    with pytest.raises(UnsupportedImage, match="unknown source format 'vdi'"):
        store.import_image("disk", source, "vdi")
    assert os.listdir(store.root) == []
