"""Build the small bootable sample vDisk used by the demo and the VM tests.

Layout of the raw image (sizes for the default 64 MiB):
    [0, 440)                 syslinux mbr.bin boot code; then the MBR partition table
    [1 MiB, size - 1 MiB)    partition 1: FAT16, bootable, syslinux + vmlinuz + initrd.gz
    [size - 1 MiB, size)     unpartitioned; the guest writes its pattern block at
                             size - PATTERN_OFFSET_FROM_END, and the blocks after
                             it in its I/O loop (init.sh, with a control disk)

Rules: no loop devices, no mounts: sfdisk, mkfs.fat --offset, mtools and the
mtools-based `syslinux --offset` all work on the image file itself. The image
is sparse (a few MiB really allocated). A missing tool or file raises
ImageBuildError naming it; a half-built image never appears at `out_path`
(it is built under a temporary name and renamed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from vdfarm.image.errors import ImageBuildError
from vdfarm.image.initramfs import build_initramfs

__all__ = [
    "ImageBuildError",
    "PATTERN_OFFSET_FROM_END",
    "PATTERN_BLOCK_SIZE",
    "PARTITION_START",
    "MBR_BIN",
    "build",
    "expected_pattern",
    "pattern_offset",
    "find_newest_kernel",
]

SECTOR_SIZE = 512
MIB = 1024 * 1024
PARTITION_START = 1 * MIB
PATTERN_OFFSET_FROM_END = 1 * MIB  # also the size of the unpartitioned tail
PATTERN_BLOCK_SIZE = 4096
PATTERN_PREFIX = b"VDFARM-PATTERN "
# Each round of the guest's I/O loop (init.sh) reads LOOP_READ_MIB MiB within
# the first LOOP_SPAN_MIB MiB of the disk, where the kernel and initramfs lie.
LOOP_READ_MIB = 2
LOOP_SPAN_MIB = 16
MIN_SIZE_MIB, MAX_SIZE_MIB = 16, 2048
FAT16_LBA_TYPE = "e"
VOLUME_LABEL = "VDFARM"

MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
MBR_BOOT_CODE_SIZE = 440
BUSYBOX = Path("/bin/busybox")
BOOT_DIR = Path("/boot")
MODULES_ROOT = Path("/lib/modules")
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.gz"
SYSLINUX_CFG_FILE = "syslinux.cfg"
KERNEL_CMDLINE = "console=ttyS0,115200 quiet loglevel=3 panic=1"

# tool -> Debian package, for the error message
REQUIRED_TOOLS = {
    "sfdisk": "fdisk",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
}


def pattern_offset(disk_size: int) -> int:
    """Byte offset of the guest's pattern block on a disk of `disk_size` bytes."""
    return disk_size - PATTERN_OFFSET_FROM_END


def expected_pattern(boot_id: str) -> bytes:
    """The exact block a guest booted with `boot_id` writes: the text, zero-padded."""
    return (PATTERN_PREFIX + boot_id.encode()).ljust(PATTERN_BLOCK_SIZE, b"\0")


def partition_sectors(size_mib: int) -> tuple[int, int]:
    """(first sector, sector count) of the FAT partition on a `size_mib` disk."""
    start = PARTITION_START // SECTOR_SIZE
    end = (size_mib * MIB - PATTERN_OFFSET_FROM_END) // SECTOR_SIZE
    return start, end - start


def sfdisk_script(start: int, count: int) -> str:
    return (
        f"label: dos\nunit: sectors\nstart={start}, size={count}, type={FAT16_LBA_TYPE}, bootable\n"
    )


def syslinux_cfg() -> str:
    return (
        f"SERIAL 0 115200\nDEFAULT vdfarm\nPROMPT 0\nTIMEOUT 0\n\n"
        f"LABEL vdfarm\n  LINUX /{KERNEL_FILE}\n  INITRD /{INITRD_FILE}\n"
        f"  APPEND {KERNEL_CMDLINE}\n"
    )


def _version_key(path: Path) -> list[tuple[int, int | str]]:
    parts = re.split(r"(\d+)", path.name)
    return [(1, int(p)) if p.isdigit() else (0, p) for p in parts if p]


def find_newest_kernel(boot_dir: Path = BOOT_DIR) -> Path:
    """The /boot/vmlinuz-<version> with the highest version. Raises ImageBuildError if none."""
    kernels = sorted(boot_dir.glob("vmlinuz-*"), key=_version_key)
    if not kernels:
        raise ImageBuildError(f"no kernel {boot_dir}/vmlinuz-* (apt-get install linux-image-amd64)")
    return kernels[-1]


def kernel_version(kernel: Path) -> str:
    """`/boot/vmlinuz-6.1.0-56-amd64` -> `6.1.0-56-amd64`. Raises ImageBuildError otherwise."""
    prefix = "vmlinuz-"
    if not kernel.name.startswith(prefix) or len(kernel.name) == len(prefix):
        raise ImageBuildError(
            f"cannot tell the kernel version of {kernel}: expected a file named vmlinuz-<version>"
        )
    return kernel.name[len(prefix) :]


def _require_tools() -> None:
    for tool, package in REQUIRED_TOOLS.items():
        if shutil.which(tool) is None:
            raise ImageBuildError(f"missing tool {tool!r} (apt-get install {package})")


def _require_file(path: Path, hint: str) -> None:
    if not path.is_file():
        raise ImageBuildError(f"missing {path} ({hint})")


def _run(args: list[str], stdin: str | None = None) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise ImageBuildError(
            f"{args[0]} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
        )


def _write_boot_code(image: Path) -> None:
    code = MBR_BIN.read_bytes()[:MBR_BOOT_CODE_SIZE]
    with open(image, "r+b") as f:
        f.write(code)


def _make_fat_partition(image: Path, start: int, count: int) -> None:
    _run(
        [
            "mkfs.fat",
            "-F",
            "16",
            "-n",
            VOLUME_LABEL,
            "--invariant",
            "-h",
            str(start),
            f"--offset={start}",
            str(image),
            str(count * SECTOR_SIZE // 1024),
        ]
    )


def _copy_files(image: Path, start: int, files: dict[str, bytes], workdir: Path) -> None:
    target = f"{image}@@{start * SECTOR_SIZE}"
    for name, data in files.items():
        source = workdir / name
        source.write_bytes(data)
        _run(["mcopy", "-o", "-i", target, str(source), f"::{name}"])
    _run(["syslinux", "--install", "--offset", str(start * SECTOR_SIZE), str(image)])


def _assemble(image: Path, size_mib: int, kernel: Path, initrd: bytes, workdir: Path) -> None:
    start, count = partition_sectors(size_mib)
    with open(image, "wb") as f:
        f.truncate(size_mib * MIB)
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", str(image)], sfdisk_script(start, count))
    _write_boot_code(image)
    _make_fat_partition(image, start, count)
    files = {
        KERNEL_FILE: kernel.read_bytes(),
        INITRD_FILE: initrd,
        SYSLINUX_CFG_FILE: syslinux_cfg().encode(),
    }
    _copy_files(image, start, files, workdir)


def build(out_path: str | Path, size_mib: int = 64, kernel: str | None = None) -> Path:
    """Build the bootable sample image at `out_path` and return its path.

    `kernel` is a /boot/vmlinuz-<version> file (default: the newest one); its
    modules come from /lib/modules/<version>.
    Raises ValueError if `size_mib` is outside [16, 2048], and ImageBuildError
    if a tool, the kernel, its modules, busybox or mbr.bin is missing or a
    tool fails.
    """
    if not MIN_SIZE_MIB <= size_mib <= MAX_SIZE_MIB:
        raise ValueError(f"size_mib must be in [{MIN_SIZE_MIB}, {MAX_SIZE_MIB}], got {size_mib}")
    out_path = Path(out_path)
    _require_tools()
    _require_file(MBR_BIN, "apt-get install syslinux-common")
    kernel_path = Path(kernel) if kernel else find_newest_kernel()
    _require_file(kernel_path, "the kernel to boot")
    version = kernel_version(kernel_path)
    settings = {
        "PATTERN_OFFSET_FROM_END": PATTERN_OFFSET_FROM_END,
        "PATTERN_BLOCK_SIZE": PATTERN_BLOCK_SIZE,
        "LOOP_READ_MIB": LOOP_READ_MIB,
        "LOOP_SPAN_MIB": LOOP_SPAN_MIB,
    }
    initrd = build_initramfs(version, MODULES_ROOT / version, BUSYBOX, settings)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vdfarm-image-", dir=out_path.parent) as tmp:
        workdir = Path(tmp)
        partial = workdir / "image.partial"
        _assemble(partial, size_mib, kernel_path, initrd, workdir)
        os.replace(partial, out_path)
    return out_path
