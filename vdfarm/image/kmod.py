"""Pick the host kernel modules a guest needs (a virtio disk, a network card, nbd), in load order.

Rules: the dependency logic (`parse_modules_dep`, `load_order`) is pure and
works on the text of `modules.dep`; only `collect_modules` touches files.
Module names compare as the kernel does: `-` and `_` are the same. Modules
built into the kernel (`modules.builtin`) need no loading and are skipped.
Compressed modules (.ko.xz, .ko.gz, .ko.zst) are decompressed here, because
busybox `insmod` in the guest may not decompress them.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vdfarm.image.errors import ImageBuildError

# What a guest needs to see /dev/vda. The PCI transport helpers exist as
# separate modules only in some kernels; they come in through modules.dep.
VIRTIO_BLK_MODULES = ("virtio_ring", "virtio", "virtio_pci", "virtio_blk")
# What a guest needs for eth0 on qemu's virtio-net-pci, and for /dev/nbdN.
VIRTIO_NET_MODULES = ("virtio_pci", "virtio_net")
NBD_MODULES = ("nbd",)
# What a guest needs to mount an ext4 root (metadata checksums need crc32c,
# which ext4 asks the crypto API for by name: no dependency names it).
EXT4_MODULES = ("crc32c_generic", "ext4")

_MODULE_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


@dataclass(frozen=True, slots=True)
class KernelModule:
    """A module ready to copy into an initramfs: its uncompressed path and body."""

    relpath: str  # e.g. kernel/drivers/block/virtio_blk.ko (always .ko)
    data: bytes


def module_name(relpath: str) -> str:
    """`kernel/drivers/virtio/virtio-pci.ko.xz` -> `virtio_pci`."""
    base = relpath.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def uncompressed_relpath(relpath: str) -> str:
    for suffix in _MODULE_SUFFIXES:
        if relpath.endswith(suffix):
            return relpath[: -len(suffix)] + ".ko"
    return relpath


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Map module name -> (its path, the paths it depends on), from modules.dep text."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if not sep or not path.strip():
            continue
        path = path.strip()
        table[module_name(path)] = (path, deps.split())
    return table


def parse_builtin(text: str) -> set[str]:
    """Names of the modules listed in modules.builtin."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(
    table: dict[str, tuple[str, list[str]]], wanted: tuple[str, ...], builtin: set[str]
) -> list[str]:
    """Paths of `wanted` modules and their dependencies, each after all it depends on.

    Raises ImageBuildError if a wanted module or a dependency is neither in
    `table` nor built in.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, needed_by: str) -> None:
        name = name.replace("-", "_")
        if name in builtin or any(module_name(p) == name for p in order) or name in visiting:
            return
        if name not in table:
            raise ImageBuildError(
                f"kernel module {name!r} (needed by {needed_by}) is neither in modules.dep "
                "nor built in"
            )
        visiting.add(name)
        path, deps = table[name]
        for dep in deps:
            visit(module_name(dep), name)
        visiting.discard(name)
        order.append(path)

    for name in wanted:
        visit(name, "the image")
    return order


def _decompress(path: Path) -> bytes:
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        if shutil.which("zstd") is None:
            raise ImageBuildError(
                f"{path} is zstd-compressed and the `zstd` tool is missing (apt-get install zstd)"
            )
        done = subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            raise ImageBuildError(f"zstd could not decompress {path}: {done.stderr.decode()}")
        return done.stdout
    return path.read_bytes()


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError as exc:
        raise ImageBuildError(
            f"missing {path}; is the kernel's modules package installed?"
        ) from exc


def collect_modules(
    modules_dir: Path, wanted: tuple[str, ...] = VIRTIO_BLK_MODULES
) -> list[KernelModule]:
    """Read the wanted modules (and their dependencies) from /lib/modules/<version>.

    Returns them in load order, uncompressed. Raises ImageBuildError if
    modules.dep, a module file, or a wanted module is missing.
    """
    table = parse_modules_dep(_read_text(modules_dir / "modules.dep"))
    builtin_path = modules_dir / "modules.builtin"
    builtin = parse_builtin(builtin_path.read_text()) if builtin_path.exists() else set()
    modules = []
    for relpath in load_order(table, wanted, builtin):
        source = modules_dir / relpath
        if not source.is_file():
            raise ImageBuildError(
                f"kernel module file {source} is listed in modules.dep but missing"
            )
        modules.append(KernelModule(uncompressed_relpath(relpath), _decompress(source)))
    return modules
