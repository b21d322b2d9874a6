"""Assemble an initramfs: busybox, /init, kernel modules, programs and files, in a gzip'd newc cpio.

Rules: the archive is built in memory with `vdfarm.image.cpio` (no `cpio`
tool, no root, no temporary tree); the same inputs give the same bytes. The
busybox binary must be static; other programs bring their loader and shared
libraries along (`vdfarm.image.programs`). Settings for /init go in
/etc/vdfarm.conf (shell `NAME=value` lines) and the modules to load, in order,
in /etc/vdfarm-modules, so an init script itself never changes. Extra files
(certificates, keys) are root-only (0600) at the absolute, normalised guest
path given. A program or file that takes the path of a busybox applet link
replaces the link; one that takes any other path the archive already holds
(/init, the config, busybox, a directory) is refused.
"""

from __future__ import annotations

import gzip
import posixpath
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from vdfarm.image import cpio
from vdfarm.image.elf import ElfFormatError, parse_elf
from vdfarm.image.errors import ImageBuildError
from vdfarm.image.kmod import VIRTIO_BLK_MODULES, KernelModule, collect_modules
from vdfarm.image.programs import GuestFile, gather_program

INIT_SCRIPT_PATH = Path(__file__).with_name("init.sh")
CONFIG_PATH = "etc/vdfarm.conf"
MODULE_LIST_PATH = "etc/vdfarm-modules"
_BASE_DIRS = ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp")


def is_static_elf(binary: bytes) -> bool:
    """True if `binary` is a 64-bit little-endian ELF without a program interpreter.

    Raises ImageBuildError if it is not such an ELF file at all.
    """
    try:
        return parse_elf(binary).interpreter is None
    except ElfFormatError as exc:
        raise ImageBuildError(f"busybox is not a 64-bit little-endian ELF binary: {exc}") from exc


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


def _guest_name(path: str) -> str:
    """`/etc/x.pem` -> `etc/x.pem`. Raises ValueError unless absolute and normalised."""
    if not path.startswith("/") or posixpath.normpath(path) != path or path == "/":
        raise ValueError(f"guest path must be absolute and normalised: {path!r}")
    return path[1:]


def _extra_entries(
    programs: Sequence[GuestFile], files: Mapping[str, bytes]
) -> list[cpio.CpioEntry]:
    entries = []
    for item in programs:
        name = _guest_name(item.path)
        if item.link_to is not None:
            entries.append(cpio.symlink(name, item.link_to))
        else:
            entries.append(cpio.regular_file(name, item.data, 0o755 if item.executable else 0o644))
    entries += [cpio.regular_file(_guest_name(path), data, 0o600) for path, data in files.items()]
    return entries


def _with_parents(entries: list[cpio.CpioEntry], present: set[str]) -> list[cpio.CpioEntry]:
    """`entries`, each preceded by those of its parent directories not yet in `present`."""
    out = []
    for entry in entries:
        for parent in _parent_dirs(entry.name):
            if parent not in present:
                present.add(parent)
                out.append(cpio.directory(parent))
        present.add(entry.name)
        out.append(entry)
    return out


def initramfs_entries(
    kernel_version: str,
    modules: list[KernelModule],
    busybox_binary: bytes,
    applets: list[str],
    init_script: bytes,
    settings: Mapping[str, int | str],
    programs: Sequence[GuestFile] = (),
    files: Mapping[str, bytes] | None = None,
) -> list[cpio.CpioEntry]:
    """All members of the initramfs, parents before children (pure).

    Raises ValueError for a bad guest path or unsafe setting, and
    ImageBuildError if a program or file takes a path the archive already holds.
    """
    extras = _extra_entries(programs, files or {})
    taken = {e.name for e in extras}
    module_root = f"lib/modules/{kernel_version}"
    entries = [cpio.directory(d, 0o1777 if d == "tmp" else 0o755) for d in _BASE_DIRS]
    entries += [
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/null", 1, 3, 0o666),
        cpio.regular_file("bin/busybox", busybox_binary, 0o755),
    ]
    entries += [
        cpio.symlink(f"bin/{name}", "busybox")
        for name in applets
        if name != "busybox" and f"bin/{name}" not in taken
    ]
    entries += _module_entries(module_root, modules)
    module_list = "".join(f"/{module_root}/{m.relpath}\n" for m in modules)
    own = [
        cpio.regular_file(MODULE_LIST_PATH, module_list.encode()),
        cpio.regular_file(CONFIG_PATH, config_text(settings).encode()),
        cpio.regular_file("init", init_script, 0o755),
    ]
    present = {e.name for e in entries + own}
    clash = sorted(taken & present)
    if clash:
        raise ImageBuildError(f"initramfs path taken twice: /{clash[0]}")
    return entries + _with_parents(extras, present) + own


def build_initramfs(
    kernel_version: str,
    modules_dir: Path,
    busybox: Path,
    settings: Mapping[str, int | str],
    *,
    modules: tuple[str, ...] = VIRTIO_BLK_MODULES,
    programs: Sequence[str | Path] = (),
    files: Mapping[str, bytes] | None = None,
    init_script: Path = INIT_SCRIPT_PATH,
) -> bytes:
    """Return the gzip-compressed initramfs for `kernel_version`.

    `modules` are loaded by /init in order (their dependencies first);
    `programs` are absolute host paths, copied with their loader and shared
    libraries; `files` maps absolute guest paths to contents; `init_script`
    becomes /init. Raises ImageBuildError if busybox is missing or dynamically
    linked, if the init script, a kernel module, a program or one of its
    libraries is missing, or if two things take one path; ValueError for a
    bad guest path or an unsafe setting.
    """
    if not busybox.is_file():
        raise ImageBuildError(f"missing {busybox} (apt-get install busybox-static)")
    busybox_binary = busybox.read_bytes()
    if not is_static_elf(busybox_binary):
        raise ImageBuildError(f"{busybox} is dynamically linked (apt-get install busybox-static)")
    if not init_script.is_file():
        raise ImageBuildError(f"missing init script {init_script}")
    gathered: list[GuestFile] = []
    for program in programs:
        for item in gather_program(program):
            if all(item.path != have.path for have in gathered):
                gathered.append(item)
    entries = initramfs_entries(
        kernel_version,
        collect_modules(modules_dir, modules),
        busybox_binary,
        busybox_applets(busybox),
        init_script.read_bytes(),
        settings,
        gathered,
        files,
    )
    return gzip.compress(cpio.write_newc(entries), compresslevel=9, mtime=0)
