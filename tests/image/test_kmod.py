"""Choosing and reading the virtio kernel modules, on a fake modules tree and on the host's."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from vdfarm.image import kmod, sample
from vdfarm.image.errors import ImageBuildError

DEP = """\
kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz \
kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz \
kernel/drivers/virtio/virtio_ring.ko.xz
kernel/fs/fuse/fuse.ko.xz:
"""


@pytest.mark.parametrize(
    "path, name",
    [
        ("kernel/drivers/virtio/virtio-pci.ko.xz", "virtio_pci"),
        ("virtio_blk.ko", "virtio_blk"),
        ("a/b/virtio_ring.ko.zst", "virtio_ring"),
        ("a/b/c.ko.gz", "c"),
    ],
)
def test_module_name_drops_directory_and_suffix(path, name):
    assert kmod.module_name(path) == name


def test_uncompressed_relpath_ends_in_plain_ko():
    assert kmod.uncompressed_relpath("k/virtio.ko.xz") == "k/virtio.ko"
    assert kmod.uncompressed_relpath("k/virtio.ko") == "k/virtio.ko"


def test_load_order_puts_every_module_after_its_dependencies():
    table = kmod.parse_modules_dep(DEP)
    order = [kmod.module_name(p) for p in kmod.load_order(table, kmod.VIRTIO_BLK_MODULES, set())]
    assert sorted(order) == sorted(
        ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk"]
    )
    for name in order:
        _, deps = table[name]
        for dep in deps:
            assert order.index(kmod.module_name(dep)) < order.index(name)


def test_builtin_modules_are_not_loaded():
    table = kmod.parse_modules_dep(DEP)
    order = kmod.load_order(table, kmod.VIRTIO_BLK_MODULES, {"virtio", "virtio_ring"})
    assert [kmod.module_name(p) for p in order] == [
        "virtio_pci_modern_dev",
        "virtio_pci",
        "virtio_blk",
    ]


def test_missing_module_is_named_in_the_error():
    table = kmod.parse_modules_dep(DEP.replace("kernel/drivers/block/virtio_blk.ko.xz:", "x:"))
    with pytest.raises(ImageBuildError, match="virtio_blk"):
        kmod.load_order(table, kmod.VIRTIO_BLK_MODULES, set())


def _fake_tree(root: Path) -> Path:
    (root / "modules.dep").write_text(DEP)
    (root / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    for line in DEP.replace("\\\n", "").splitlines():
        path = root / line.split(":")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lzma.compress(b"ELF " + kmod.module_name(path.name).encode()))
    return root


def test_collect_modules_decompresses_xz(tmp_path):
    modules = kmod.collect_modules(_fake_tree(tmp_path))
    by_name = {kmod.module_name(m.relpath): m for m in modules}
    assert by_name["virtio_blk"].relpath == "kernel/drivers/block/virtio_blk.ko"
    assert by_name["virtio_blk"].data == b"ELF virtio_blk"
    assert "fuse" not in by_name


def test_collect_modules_without_modules_dep_raises(tmp_path):
    with pytest.raises(ImageBuildError, match="modules.dep"):
        kmod.collect_modules(tmp_path)


def test_collect_modules_with_a_listed_file_missing_raises(tmp_path):
    _fake_tree(tmp_path)
    (tmp_path / "kernel/drivers/block/virtio_blk.ko.xz").unlink()
    with pytest.raises(ImageBuildError, match="virtio_blk"):
        kmod.collect_modules(tmp_path)


def test_host_kernel_modules_for_virtio_blk_are_real_elf_objects():
    version = sample.kernel_version(sample.find_newest_kernel())
    modules = kmod.collect_modules(sample.MODULES_ROOT / version)
    names = [kmod.module_name(m.relpath) for m in modules]
    assert names[-1] == "virtio_blk"
    assert "virtio_pci" in names
    assert all(m.data[:4] == b"\x7fELF" for m in modules)
