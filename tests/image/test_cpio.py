"""The newc writer, checked by our reader and by the independent `cpio` tool."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vdfarm.image import cpio

ENTRIES = [
    cpio.directory("bin"),
    cpio.regular_file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755),
    cpio.symlink("bin/sh", "hello"),
    cpio.directory("dev"),
    cpio.char_device("dev/console", 5, 1),
    cpio.regular_file("empty", b""),
    cpio.regular_file("odd-size", b"abc"),  # data needs padding
    cpio.regular_file("a-name-of-odd-len", b"x" * 4097),
]


def test_write_then_read_gives_the_same_entries():
    archive = cpio.write_newc(ENTRIES)
    assert len(archive) % 4 == 0
    assert cpio.read_newc(archive) == ENTRIES


def test_leading_slash_is_dropped_from_names():
    archive = cpio.write_newc([cpio.regular_file("/init", b"x", 0o755)])
    assert [e.name for e in cpio.read_newc(archive)] == ["init"]


def test_same_entries_give_the_same_bytes():
    assert cpio.write_newc(ENTRIES) == cpio.write_newc(list(ENTRIES))


@pytest.mark.parametrize("name", ["", "/", "bin"])
def test_empty_or_repeated_names_are_refused(name):
    with pytest.raises(ValueError):
        cpio.write_newc([cpio.directory("bin"), cpio.directory(name)])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio tool not installed")
def test_gnu_cpio_lists_and_extracts_our_archive(tmp_path):
    archive = cpio.write_newc([e for e in ENTRIES if not e.is_char_device])
    listing = (
        subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True, check=True)
        .stdout.decode()
        .split()
    )
    assert listing == [e.name for e in ENTRIES if not e.is_char_device]
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=archive,
        cwd=tmp_path,
        check=True,
    )
    assert (tmp_path / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin/hello").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin/sh").readlink().as_posix() == "hello"
    assert (tmp_path / "a-name-of-odd-len").read_bytes() == b"x" * 4097


def test_every_truncation_raises_cpio_format_error():
    archive = cpio.write_newc(ENTRIES[:3])
    for cut in range(len(archive)):
        with pytest.raises(cpio.CpioFormatError):
            cpio.read_newc(archive[:cut])


def test_bad_magic_and_bad_hex_are_refused():
    archive = cpio.write_newc(ENTRIES[:1])
    with pytest.raises(cpio.CpioFormatError):
        cpio.read_newc(b"070707" + archive[6:])
    with pytest.raises(cpio.CpioFormatError):
        cpio.read_newc(archive[:6] + b"ZZZZZZZZ" + archive[14:])
