"""Reading the loader's facts out of ELF files: made-up ones, the host's, and broken ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.image.elf_maker import EM_AARCH64, make_elf
from vdfarm.image import sample
from vdfarm.image.elf import EM_X86_64, ElfFormatError, parse_elf

LOADER = "/lib64/ld-linux-x86-64.so.2"


def test_a_program_names_its_loader_and_libraries_in_order():
    info = parse_elf(make_elf(LOADER, ("libb.so.1", "liba.so.2", "libc.so.6")))
    assert info.machine == EM_X86_64
    assert info.interpreter == LOADER
    assert info.needed == ("libb.so.1", "liba.so.2", "libc.so.6")
    assert info.is_dynamic


def test_a_library_has_a_soname_and_search_paths():
    info = parse_elf(
        make_elf(
            None, ("libc.so.6",), soname="liba.so.2", runpath="$ORIGIN/../x:/opt/y", rpath="/r"
        )
    )
    assert info.interpreter is None
    assert info.soname == "liba.so.2"
    assert info.runpath == ("$ORIGIN/../x", "/opt/y")
    assert info.rpath == ("/r",)


def test_a_static_file_has_no_loader_and_no_libraries():
    info = parse_elf(make_elf(None, (), dynamic=False, machine=EM_AARCH64))
    assert (info.interpreter, info.needed, info.machine) == (None, (), EM_AARCH64)
    assert not info.is_dynamic
    assert not parse_elf(sample.BUSYBOX.read_bytes()).is_dynamic


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd not installed")
def test_the_hosts_ls_needs_what_ldd_says():
    ls = Path(shutil.which("ls") or "/bin/ls")
    info = parse_elf(ls.read_bytes())
    assert info.interpreter is not None and Path(info.interpreter).is_file()
    ldd = subprocess.run(["ldd", str(ls)], capture_output=True, text=True, check=True).stdout
    for name in info.needed:
        assert f"{name} =>" in ldd


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "not an ELF"),
        (b"#!/bin/sh\n" + b"\0" * 64, "not an ELF"),
        (b"\x7fELF" + bytes([1, 1]) + b"\0" * 58, "64-bit"),  # 32-bit
        (b"\x7fELF" + bytes([2, 2]) + b"\0" * 58, "64-bit"),  # big-endian
    ],
)
def test_files_that_are_not_elf64_le_are_refused(data, why):
    with pytest.raises(ElfFormatError, match=why):
        parse_elf(data)


def test_every_truncation_and_every_corrupted_byte_parses_or_raises_elf_format_error():
    """Parse it, or raise ElfFormatError, never anything else."""
    good = make_elf(LOADER, ("liba.so.1", "libc.so.6"), runpath="/x")
    for length in range(len(good)):
        try:
            parse_elf(good[:length])
        except ElfFormatError:
            pass
    for index in range(len(good)):
        for value in (0x00, 0x7F, 0xFF):
            mutated = bytearray(good)
            mutated[index] = value
            try:
                parse_elf(bytes(mutated))
            except ElfFormatError:
                pass


def test_a_string_table_outside_the_loaded_segments_is_refused():
    with pytest.raises(ElfFormatError, match="no loaded segment"):
        parse_elf(make_elf(LOADER, ("liba.so.1",), strtab_address=0x7FFF0000))
