"""Gathering a program with its loader and libraries: on a made-up tree of ELF
files (search order, RUNPATH, foreign libraries, symlinks, what is missing)
and on the host's own programs, checked against `ldd`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.image.elf_maker import EM_AARCH64, make_elf
from vdfarm.image import programs
from vdfarm.image.elf import ElfInfo
from vdfarm.image.errors import ImageBuildError


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """bin/prog needs liba (-> libb, libc) and libc; libc needs the loader by name.
    sys1 holds liba (a symlink to its versioned file), a foreign libb and a
    link to the loader; sys2 holds the right libb and libc."""
    loader = _write(tmp_path / "ld.so", make_elf(None, (), soname="ld.so"))
    _write(tmp_path / "bin/prog", make_elf(str(loader), ("liba.so.1", "libc.so.6")))
    _write(tmp_path / "sys1/liba.so.1.2.3", make_elf(None, ("libb.so.1", "libc.so.6")))
    (tmp_path / "sys1/liba.so.1").symlink_to("liba.so.1.2.3")
    _write(tmp_path / "sys1/libb.so.1", make_elf(None, (), machine=EM_AARCH64))
    (tmp_path / "sys1/ld.so").symlink_to(loader)
    _write(tmp_path / "sys2/libb.so.1", make_elf(None, ()))
    _write(tmp_path / "sys2/libc.so.6", make_elf(None, ("ld.so",)))
    return tmp_path


def _dirs(tree: Path) -> tuple[str, ...]:
    return (str(tree / "sys1"), str(tree / "sys2"))


def test_the_program_its_loader_and_every_library_each_where_the_loader_finds_it(tree):
    files = programs.gather_program(tree / "bin/prog", _dirs(tree))
    by_path = {f.path: f for f in files}
    assert [f.path for f in files] == [
        str(tree / "bin/prog"),
        str(tree / "ld.so"),
        str(tree / "sys1/liba.so.1"),
        str(tree / "sys2/libc.so.6"),
        str(tree / "sys2/libb.so.1"),  # the aarch64 one in sys1 is skipped
        str(tree / "sys1/ld.so"),
    ]
    assert by_path[str(tree / "bin/prog")].executable
    assert by_path[str(tree / "ld.so")].executable
    # liba is the symlink's target's contents, under the name the loader asks for.
    assert by_path[str(tree / "sys1/liba.so.1")].data == (tree / "sys1/liba.so.1.2.3").read_bytes()
    # The loader asked for again by name is a link to its first copy, not a second copy.
    assert by_path[str(tree / "sys1/ld.so")].link_to == str(tree / "ld.so")
    assert by_path[str(tree / "sys1/ld.so")].data == b""


def test_runpath_with_origin_comes_before_the_system_directories(tree):
    _write(tree / "private/liba.so.1", make_elf(None, ("libc.so.6",)))
    loader = str(tree / "ld.so")
    _write(tree / "bin/prog2", make_elf(loader, ("liba.so.1",), runpath="$ORIGIN/../private"))
    paths = [f.path for f in programs.gather_program(tree / "bin/prog2", _dirs(tree))]
    assert str(tree / "private/liba.so.1") in paths
    assert str(tree / "sys1/liba.so.1") not in paths


def test_search_dirs_expand_origin_and_drop_what_the_guest_cannot_use():
    info = ElfInfo(62, None, (), runpath=("${ORIGIN}/lib", "$LIB/x", "rel", "/opt/a/../b"))
    assert programs.search_dirs(info, "/usr/bin", ("/lib",)) == ["/usr/bin/lib", "/opt/b", "/lib"]
    rpath_only = ElfInfo(62, None, (), rpath=("/r",))
    assert programs.search_dirs(rpath_only, "/", ("/lib", "/r")) == ["/r", "/lib"]
    both = ElfInfo(62, None, (), rpath=("/r",), runpath=("/p",))
    assert programs.search_dirs(both, "/", ()) == ["/p"]  # RUNPATH hides RPATH


def test_a_library_found_nowhere_is_named_with_what_needs_it(tree):
    (tree / "sys2/libb.so.1").unlink()
    with pytest.raises(ImageBuildError, match=r"libb\.so\.1 \(needed by .*liba\.so\.1\)"):
        programs.gather_program(tree / "bin/prog", _dirs(tree))


def test_a_missing_program_a_relative_path_and_a_non_elf_file_are_refused(tree):
    with pytest.raises(ImageBuildError, match="missing program"):
        programs.gather_program(tree / "bin/none", _dirs(tree))
    with pytest.raises(ImageBuildError, match="absolute"):
        programs.gather_program("bin/prog", _dirs(tree))
    script = _write(tree / "bin/script", b"#!/bin/sh\necho hi\n")
    with pytest.raises(ImageBuildError, match="not a usable ELF"):
        programs.gather_program(script, _dirs(tree))


def _ldd_paths(program: Path) -> set[str]:
    out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"=> (/\S+)", out))


@pytest.mark.parametrize("name", ["ls", "nbd-client"])
def test_host_programs_get_every_library_ldd_lists(name):
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None or shutil.which("ldd") is None:
        pytest.skip(f"{name} or ldd not installed")
    files = programs.gather_program(found)
    paths = {f.path for f in files}
    assert _ldd_paths(Path(found)) <= paths
    assert "/lib64/ld-linux-x86-64.so.2" in paths
    assert sum(f.data[:4] == b"\x7fELF" for f in files) == len([f for f in files if not f.link_to])
