"""Build the network-bootable sample: an ext4 root file system, a kernel,
and an initramfs that attaches the root over NBD, in one directory.

What it writes in DIR:
    root.ext4   the root file system, a raw disk image (ext4 from its first
                byte, no partition table): import it as a vDisk
    vmlinuz     the kernel (the host's newest /boot/vmlinuz-*, or the one given)
    initrd.gz   busybox, Debian's nbd-client with its libraries, the kernel's
                virtio_net, nbd and ext4 modules, and /init (netboot_init.sh)
    cmdline     the kernel command line to give the vDisk's boot files
The root holds busybox and /sbin/init (netboot_root_init.sh), which
prints its markers, writes a file, reads it back past the page cache and
powers off.

The kernel command line the boot path adds per device (read by /init):
    vdfarm.server=HOST[:PORT]   the NBD server (port 10809 if not given)
    vdfarm.export=NAME          the export (the device's name or MAC)
    vdfarm.ip=dhcp|ADDR/PREFIX[,GATEWAY]   eth0's address (default dhcp)
    vdfarm.id=ID                a name the markers print (optional)

Rules: no mounts, no loop devices, no root needed: `mkfs.ext4 -d` copies a
directory tree (built in a temporary directory) into the image file. The
initramfs is `initramfs.build_initramfs`'s. Every file is written under a
temporary name in DIR and renamed when whole, so a half-built sample never
takes a final name. A missing tool or file is an ImageBuildError naming
its Debian package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vdfarm.image import kmod, sample
from vdfarm.image.errors import ImageBuildError
from vdfarm.image.initramfs import build_initramfs, busybox_applets

MIB = 1024 * 1024
MIN_SIZE_MIB, MAX_SIZE_MIB = 16, 2048
NBD_CLIENT = Path("/usr/sbin/nbd-client")
MKFS_EXT4 = "mkfs.ext4"
DEFAULT_NBD_PORT = 10809
INIT_SCRIPT = Path(__file__).with_name("netboot_init.sh")
ROOT_INIT_SCRIPT = Path(__file__).with_name("netboot_root_init.sh")
ROOT_FILE, KERNEL_FILE, INITRD_FILE, CMDLINE_FILE = "root.ext4", "vmlinuz", "initrd.gz", "cmdline"
ROOT_LABEL = "vdfarm-root"
ROOT_DIRS = ("bin", "dev", "etc", "proc", "sbin", "sys", "tmp", "var", "var/lib")
MODULES = kmod.VIRTIO_NET_MODULES + kmod.NBD_MODULES + kmod.EXT4_MODULES


@dataclass(frozen=True)
class NetbootSample:
    """The files of a network-bootable sample and its kernel command line."""

    root: Path
    kernel: Path
    initrd: Path
    cmdline: str
    size_mib: int


def device_cmdline(cmdline: str, server: str, export: str, boot_id: str | None = None) -> str:
    """CMDLINE with the parameters one device boots with: the NBD SERVER
    (HOST[:PORT]) and its EXPORT (and a BOOT_ID for the markers)."""
    words = [cmdline, f"vdfarm.server={server}", f"vdfarm.export={export}"]
    if boot_id:
        words.append(f"vdfarm.id={boot_id}")
    return " ".join(w for w in words if w)


def root_tree(tree: Path, busybox: Path, applets: list[str]) -> None:
    """Lay out the root file system's files under TREE (an empty directory)."""
    for directory in ROOT_DIRS:
        (tree / directory).mkdir(mode=0o755, parents=True, exist_ok=True)
    (tree / "tmp").chmod(0o1777)
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    (tree / "bin" / "busybox").chmod(0o755)
    for applet in applets:
        if applet != "busybox" and not (tree / "bin" / applet).exists():
            (tree / "bin" / applet).symlink_to("busybox")
    init = tree / "sbin" / "init"
    shutil.copyfile(ROOT_INIT_SCRIPT, init)
    init.chmod(0o755)
    (tree / "etc" / "hostname").write_text("vdfarm-netboot\n")


def make_ext4(image: Path, tree: Path, size_mib: int) -> None:
    """An ext4 file system of SIZE_MIB at IMAGE holding TREE (no mount).

    Raises ImageBuildError.
    """
    with open(image, "wb") as fh:
        fh.truncate(size_mib * MIB)
    done = subprocess.run(
        [
            MKFS_EXT4,
            "-q",
            "-F",
            "-L",
            ROOT_LABEL,
            "-d",
            str(tree),
            # initialise everything now: no background writes in the guest
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
            str(image),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ImageBuildError(
            f"{MKFS_EXT4} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
        )


def _require() -> None:
    if shutil.which(MKFS_EXT4) is None:
        raise ImageBuildError(f"missing tool {MKFS_EXT4!r} (apt-get install e2fsprogs)")
    if not NBD_CLIENT.is_file():
        raise ImageBuildError(f"missing {NBD_CLIENT} (apt-get install nbd-client)")
    for script in (INIT_SCRIPT, ROOT_INIT_SCRIPT):
        if not script.is_file():
            raise ImageBuildError(f"missing init script {script}")


def build(out_dir: str | Path, size_mib: int = 64, kernel: str | None = None) -> NetbootSample:
    """Build the network-bootable sample in OUT_DIR (made if missing; its
    files replaced) and return it. KERNEL is a /boot/vmlinuz-<version> file
    (default: the newest); its modules come from /lib/modules/<version>.

    Raises ValueError (SIZE_MIB outside [16, 2048]), ImageBuildError (a
    tool, the kernel, a module, busybox or nbd-client missing; a tool failed).
    """
    if not MIN_SIZE_MIB <= size_mib <= MAX_SIZE_MIB:
        raise ValueError(f"size_mib must be in [{MIN_SIZE_MIB}, {MAX_SIZE_MIB}], got {size_mib}")
    _require()
    kernel_path = Path(kernel) if kernel else sample.find_newest_kernel()
    if not kernel_path.is_file():
        raise ImageBuildError(f"missing {kernel_path} (the kernel to boot)")
    version = sample.kernel_version(kernel_path)
    initrd = build_initramfs(
        version,
        sample.MODULES_ROOT / version,
        sample.BUSYBOX,
        {"DEFAULT_NBD_PORT": DEFAULT_NBD_PORT},
        modules=MODULES,
        programs=[NBD_CLIENT],
        init_script=INIT_SCRIPT,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vdfarm-netboot-", dir=out) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        tree.mkdir()
        root_tree(tree, sample.BUSYBOX, busybox_applets(sample.BUSYBOX))
        make_ext4(work / ROOT_FILE, tree, size_mib)
        shutil.copyfile(kernel_path, work / KERNEL_FILE)
        (work / INITRD_FILE).write_bytes(initrd)
        (work / CMDLINE_FILE).write_text(sample.KERNEL_CMDLINE + "\n")
        for name in (ROOT_FILE, KERNEL_FILE, INITRD_FILE, CMDLINE_FILE):
            os.replace(work / name, out / name)
    return NetbootSample(
        root=out / ROOT_FILE,
        kernel=out / KERNEL_FILE,
        initrd=out / INITRD_FILE,
        cmdline=sample.KERNEL_CMDLINE,
        size_mib=size_mib,
    )
