"""Assemble the sample image's initramfs: busybox, /init, virtio modules, in a gzip'd newc cpio.

Rules: the archive is built in memory with `vdfarm.image.cpio` (no `cpio`
tool, no root, no temporary tree); the same inputs give the same bytes. The
busybox binary must be static, since the initramfs has no libc. Settings for
/init go in /etc/vdfarm.conf (shell `NAME=value` lines) and the modules to load,
in order, in /etc/vdfarm-modules, so init.sh itself never changes.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path

from vdfarm.image import cpio
from vdfarm.image.errors import ImageBuildError
from vdfarm.image.kmod import KernelModule, collect_modules

INIT_SCRIPT_PATH = Path(__file__).with_name("init.sh")
CONFIG_PATH = "etc/vdfarm.conf"
MODULE_LIST_PATH = "etc/vdfarm-modules"
_BASE_DIRS = ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp")
_PT_INTERP = 3


def is_static_elf(binary: bytes) -> bool:
    """True if `binary` is a 64-bit little-endian ELF without a program interpreter.

    Raises ImageBuildError if it is not such an ELF file at all.
    """
    if binary[:4] != b"\x7fELF" or binary[4] != 2 or binary[5] != 1:
        raise ImageBuildError("busybox is not a 64-bit little-endian ELF binary")
    (phoff,) = struct.unpack_from("<Q", binary, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", binary, 0x36)
    for index in range(phnum):
        (p_type,) = struct.unpack_from("<I", binary, phoff + index * phentsize)
        if p_type == _PT_INTERP:
            return False
    return True


def busybox_applets(busybox: Path) -> list[str]:
    """Names of the applets `busybox` provides. Raises ImageBuildError if it cannot run."""
    try:
        done = subprocess.run([str(busybox), "--list"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageBuildError(f"cannot run {busybox} --list: {exc}") from exc
    return sorted({name for name in done.stdout.decode().split() if "/" not in name})


def _parent_dirs(relpath: str) -> list[str]:
    parts = relpath.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _module_entries(module_root: str, modules: list[KernelModule]) -> list[cpio.CpioEntry]:
    dirs: list[str] = [module_root]
    files = []
    for module in modules:
        path = f"{module_root}/{module.relpath}"
        dirs.extend(d for d in _parent_dirs(path) if d not in dirs and d.startswith(module_root))
        files.append(cpio.regular_file(path, module.data))
    return [cpio.directory(d) for d in dirs] + files


def config_text(settings: Mapping[str, int | str]) -> str:
    """Shell `NAME=value` lines for /etc/vdfarm.conf. Raises ValueError on unsafe values."""
    lines = []
    for name, value in settings.items():
        if not name.isidentifier() or any(c in str(value) for c in "'\"$`\\\n "):
            raise ValueError(f"unsafe init setting {name}={value!r}")
        lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def initramfs_entries(
    kernel_version: str,
    modules: list[KernelModule],
    busybox_binary: bytes,
    applets: list[str],
    init_script: bytes,
    settings: Mapping[str, int | str],
) -> list[cpio.CpioEntry]:
    """All members of the initramfs, parents before children (pure)."""
    module_root = f"lib/modules/{kernel_version}"
    entries = [cpio.directory(d, 0o1777 if d == "tmp" else 0o755) for d in _BASE_DIRS]
    entries += [
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/null", 1, 3, 0o666),
        cpio.regular_file("bin/busybox", busybox_binary, 0o755),
    ]
    entries += [cpio.symlink(f"bin/{name}", "busybox") for name in applets if name != "busybox"]
    entries += _module_entries(module_root, modules)
    module_list = "".join(f"/{module_root}/{m.relpath}\n" for m in modules)
    entries += [
        cpio.regular_file(MODULE_LIST_PATH, module_list.encode()),
        cpio.regular_file(CONFIG_PATH, config_text(settings).encode()),
        cpio.regular_file("init", init_script, 0o755),
    ]
    return entries


def build_initramfs(
    kernel_version: str, modules_dir: Path, busybox: Path, settings: Mapping[str, int | str]
) -> bytes:
    """Return the gzip-compressed initramfs for `kernel_version`.

    Raises ImageBuildError if busybox is missing or dynamically linked, if
    init.sh is missing, or if a virtio module cannot be found.
    """
    if not busybox.is_file():
        raise ImageBuildError(f"missing {busybox} (apt-get install busybox-static)")
    busybox_binary = busybox.read_bytes()
    if not is_static_elf(busybox_binary):
        raise ImageBuildError(f"{busybox} is dynamically linked (apt-get install busybox-static)")
    if not INIT_SCRIPT_PATH.is_file():
        raise ImageBuildError(f"missing init script {INIT_SCRIPT_PATH}")
    entries = initramfs_entries(
        kernel_version,
        collect_modules(modules_dir),
        busybox_binary,
        busybox_applets(busybox),
        INIT_SCRIPT_PATH.read_bytes(),
        settings,
    )
    return gzip.compress(cpio.write_newc(entries), compresslevel=9, mtime=0)
