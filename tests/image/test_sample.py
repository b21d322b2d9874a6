"""The sample image as built: partition table, boot code, FAT files, initramfs, sparseness."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.image.conftest import read_pattern_block
from vdfarm.image import cpio, sample
from vdfarm.image.errors import ImageBuildError

MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


def fat_target(image: Path) -> str:
    return f"{image}@@{sample.PARTITION_START}"


def fat_file(image: Path, name: str, tmp_path: Path) -> bytes:
    out = tmp_path / name
    subprocess.run(
        ["mcopy", "-o", "-i", fat_target(image), f"::{name}", str(out)], check=True, env=MTOOLS_ENV
    )
    return out.read_bytes()


def test_one_bootable_fat_partition_leaving_the_last_mib_free(sample_image):
    dump = subprocess.run(
        ["sfdisk", "--json", str(sample_image)], capture_output=True, text=True, check=True
    ).stdout
    table = json.loads(dump)["partitiontable"]
    assert table["label"] == "dos"
    [part] = table["partitions"]
    assert part["bootable"] is True
    assert part["type"] == "e"
    assert part["start"] * 512 == sample.PARTITION_START
    end = (part["start"] + part["size"]) * 512
    assert end == sample_image.stat().st_size - sample.PATTERN_OFFSET_FROM_END
    assert sample.pattern_offset(sample_image.stat().st_size) >= end


def test_boot_code_is_syslinux_mbr(sample_image):
    head = sample_image.read_bytes()[:512]
    assert head[:440] == sample.MBR_BIN.read_bytes()[:440]
    assert head[510:512] == b"\x55\xaa"


def test_fat_boot_sector_counts_the_partition_offset_as_hidden(sample_image):
    with open(sample_image, "rb") as f:
        f.seek(sample.PARTITION_START)
        boot = f.read(512)
    assert boot[0x36:0x3E] == b"FAT16   "
    (hidden,) = struct.unpack_from("<I", boot, 0x1C)
    assert hidden * 512 == sample.PARTITION_START


def test_fat_holds_kernel_initramfs_and_syslinux(sample_image):
    listing = subprocess.run(
        ["mdir", "-a", "-b", "-i", fat_target(sample_image), "::"],
        capture_output=True,
        text=True,
        check=True,
        env=MTOOLS_ENV,
    ).stdout
    names = {line.strip().lstrip(":/").lower() for line in listing.splitlines()}
    assert {"vmlinuz", "initrd.gz", "syslinux.cfg", "ldlinux.sys", "ldlinux.c32"} <= names


def test_kernel_is_the_hosts_newest(sample_image, tmp_path):
    assert fat_file(sample_image, "vmlinuz", tmp_path) == (sample.find_newest_kernel().read_bytes())


def test_syslinux_cfg_boots_kernel_with_serial_console(sample_image, tmp_path):
    cfg = fat_file(sample_image, "syslinux.cfg", tmp_path).decode()
    assert "LINUX /vmlinuz" in cfg and "INITRD /initrd.gz" in cfg
    append = next(line for line in cfg.splitlines() if line.strip().startswith("APPEND"))
    assert "console=ttyS0" in append
    assert "vdfarm.id" not in append  # the id comes from the SMBIOS serial


def test_initramfs_in_the_image_has_the_init_script(sample_image, tmp_path):
    entries = cpio.read_newc(gzip.decompress(fat_file(sample_image, "initrd.gz", tmp_path)))
    init = next(e for e in entries if e.name == "init")
    assert b"VDFARM-BOOT-OK" in init.data and init.mode & 0o100


def test_pattern_block_starts_empty(sample_image):
    assert read_pattern_block(sample_image) == b"\0" * sample.PATTERN_BLOCK_SIZE


def test_image_has_the_asked_size_and_is_mostly_sparse(sample_image):
    info = sample_image.stat()
    assert info.st_size == 64 * sample.MIB
    assert info.st_blocks * 512 < info.st_size // 2


def test_expected_pattern_is_one_padded_block():
    block = sample.expected_pattern("pc-7")
    assert len(block) == sample.PATTERN_BLOCK_SIZE
    assert block.rstrip(b"\0") == b"VDFARM-PATTERN pc-7"


def test_newest_kernel_compares_versions_as_numbers(tmp_path):
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"):
        (tmp_path / f"vmlinuz-{version}").write_bytes(b"")
    assert sample.find_newest_kernel(tmp_path).name == "vmlinuz-6.1.0-10-amd64"


def test_no_kernel_raises(tmp_path):
    with pytest.raises(ImageBuildError, match="vmlinuz"):
        sample.find_newest_kernel(tmp_path)


def test_kernel_without_version_in_its_name_raises(tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"x")
    with pytest.raises(ImageBuildError, match="vmlinuz-<version>"):
        sample.build(tmp_path / "out.raw", kernel=str(kernel))
    assert not (tmp_path / "out.raw").exists()


def test_missing_kernel_file_raises(tmp_path):
    with pytest.raises(ImageBuildError, match="vmlinuz-0.0-none"):
        sample.build(tmp_path / "out.raw", kernel=str(tmp_path / "vmlinuz-0.0-none"))


def test_kernel_without_modules_raises(tmp_path):
    kernel = tmp_path / "vmlinuz-0.0-nomodules"
    kernel.write_bytes(b"x")
    with pytest.raises(ImageBuildError, match="0.0-nomodules"):
        sample.build(tmp_path / "out.raw", kernel=str(kernel))


def test_missing_tool_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageBuildError, match="sfdisk"):
        sample.build(tmp_path / "out.raw")
    assert not (tmp_path / "out.raw").exists()


@pytest.mark.parametrize("size_mib", [0, 15, 4096])
def test_size_out_of_range_raises(tmp_path, size_mib):
    with pytest.raises(ValueError):
        sample.build(tmp_path / "out.raw", size_mib=size_mib)
