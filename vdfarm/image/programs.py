"""Gather a dynamically linked host program for an initramfs: itself, its loader, its libraries.

Rules: libraries are found the way the guest's loader will find them, not the
way the host's does: the initramfs has no /etc/ld.so.cache, so the copied
loader searches only the object's DT_RUNPATH (or, without one, its DT_RPATH)
and then its built-in system directories (`SYSTEM_LIB_DIRS`, Debian's x86-64
glibc). A library found anywhere else (an ld.so.conf-only directory such as
/usr/local/lib) would not load in the guest, so it is an ImageBuildError
naming it, found at build time rather than at boot. Each file keeps in the
guest the path it was found under on the host, as a regular file holding the
symlink-resolved contents; a second guest path for the same host file becomes
a symlink to the first (the loader is both PT_INTERP and libc's DT_NEEDED).
Libraries of another machine or class (a 32-bit or foreign library under the
same name) are skipped, as the loader skips them. Libraries a program
`dlopen`s at run time are not in DT_NEEDED and are not found here. Which
directories to search (`search_dirs`) is pure; `gather_program` reads files.
"""

from __future__ import annotations

import posixpath
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from vdfarm.image.elf import ElfFormatError, ElfInfo, parse_elf
from vdfarm.image.errors import ImageBuildError

# The search path built into Debian's x86-64 glibc loader (`ld.so --help`).
SYSTEM_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")


@dataclass(frozen=True, slots=True)
class GuestFile:
    """One file to put in the initramfs: at `path`, either `data` or a symlink to `link_to`."""

    path: str  # absolute guest path, e.g. /lib/x86_64-linux-gnu/libc.so.6
    data: bytes = b""
    executable: bool = False
    link_to: str | None = None


def search_dirs(
    info: ElfInfo, origin: str, system_dirs: tuple[str, ...] = SYSTEM_LIB_DIRS
) -> list[str]:
    """Directories the guest's loader searches for `info`'s DT_NEEDED names, in order.

    `origin` is the directory of the object itself (for $ORIGIN). Entries
    using other dynamic string tokens ($LIB, $PLATFORM) or relative paths
    are left out: they depend on the loader's build and the working directory.
    """
    own = info.runpath or info.rpath
    dirs = []
    for entry in own:
        expanded = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
        if expanded.startswith("/") and "$" not in expanded:
            dirs.append(posixpath.normpath(expanded))
    return dirs + [d for d in system_dirs if d not in dirs]


def _read_elf(path: Path, what: str = "file") -> tuple[bytes, ElfInfo]:
    if not path.is_file():
        raise ImageBuildError(f"missing {what} {path}")
    data = path.read_bytes()
    try:
        return data, parse_elf(data)
    except ElfFormatError as exc:
        raise ImageBuildError(f"{path} is not a usable ELF file: {exc}") from exc


def _find_library(
    name: str, dirs: list[str], machine: int, needed_by: str
) -> tuple[str, bytes, ElfInfo]:
    for directory in dirs:
        candidate = Path(directory) / name
        if not candidate.is_file():
            continue
        data = candidate.read_bytes()
        try:
            info = parse_elf(data)
        except ElfFormatError:
            continue  # another class or not ELF: the loader skips it too
        if info.machine == machine:
            return str(candidate), data, info
    raise ImageBuildError(
        f"shared library {name} (needed by {needed_by}) is in none of {', '.join(dirs)}"
    )


def gather_program(
    program: str | Path, system_dirs: tuple[str, ...] = SYSTEM_LIB_DIRS
) -> list[GuestFile]:
    """`program`, its interpreter and every shared library it needs, as guest files.

    The program keeps its absolute path (the caller's spelling). Raises
    ImageBuildError if the program is missing or not ELF, or a library
    cannot be found where the guest's loader would look.
    """
    path = Path(program)
    if not path.is_absolute():
        raise ImageBuildError(f"program path must be absolute: {program}")
    data, info = _read_elf(path, "program")
    files: list[GuestFile] = []
    real_to_guest: dict[str, str] = {}  # resolved host path -> first guest path holding it

    def add(guest_path: str, contents: bytes, executable: bool = False) -> None:
        if any(f.path == guest_path for f in files):
            return
        real = str(Path(guest_path).resolve())
        if real in real_to_guest:
            files.append(GuestFile(guest_path, link_to=real_to_guest[real]))
        else:
            real_to_guest[real] = guest_path
            files.append(GuestFile(guest_path, contents, executable=executable))

    add(str(path), data, executable=True)
    if info.interpreter is not None:
        loader_data, _ = _read_elf(Path(info.interpreter), f"loader of {path}:")
        add(info.interpreter, loader_data, executable=True)
    queue = deque([(str(path), info)])
    seen_names: set[str] = set()
    while queue:
        needer, needer_info = queue.popleft()
        dirs = search_dirs(needer_info, posixpath.dirname(needer), system_dirs)
        for name in needer_info.needed:
            if name in seen_names:
                continue
            seen_names.add(name)
            if name.startswith("/"):
                found, (lib_data, lib_info) = name, _read_elf(Path(name), "library")
            elif "/" in name:
                raise ImageBuildError(f"{needer} needs {name}, a relative path")
            else:
                found, lib_data, lib_info = _find_library(name, dirs, info.machine, needer)
            add(found, lib_data)
            queue.append((found, lib_info))
    return files
