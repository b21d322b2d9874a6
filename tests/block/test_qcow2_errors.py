"""Qcow2File on bad input: refused at open with a clear Qcow2FormatError /
Qcow2UnsupportedError, or OSError(EIO) when a read meets corrupt metadata.

Fuzz invariant, in plain words: whatever bytes of a small image's metadata
are changed, opening it raises Qcow2FormatError or succeeds, and reads and
extents then answer or raise OSError; never anything else."""

from __future__ import annotations

import errno
import functools
import os
import struct
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdfarm.block import qcow2_format as fmt
from vdfarm.block.qcow2 import Qcow2File, qcow2_info
from vdfarm.block.qcow2_format import Qcow2FormatError, Qcow2UnsupportedError

from .qcow2_tools import create, qemu_io

MIB = 1 << 20


@pytest.fixture
def image(tmp_path):
    """A 1 MiB v3 image, 4 KiB clusters, data in its first two clusters."""
    path = tmp_path / "img.qcow2"
    create(path, MIB, 4096)
    qemu_io(path, "write -P 0x42 0 8192", "write -c 65536 4096")
    return path


def header_of(path) -> fmt.Qcow2Header:
    with open(path, "rb") as f:
        return fmt.parse_header(f.read(4096))


def poke(path, offset: int, pack: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(pack, value))


def l2_offset_of(path) -> int:
    h = header_of(path)
    with open(path, "rb") as f:
        f.seek(h.l1_table_offset)
        return struct.unpack(">Q", f.read(8))[0] & fmt.OFFSET_MASK


@pytest.mark.parametrize("content", [b"", b"QFI", b"QFI\xfb" + bytes(20), b"x" * 5000, bytes(4096)])
def test_garbage_and_truncated_files(tmp_path, content):
    path = tmp_path / "bad.qcow2"
    path.write_bytes(content)
    with pytest.raises(Qcow2FormatError):
        Qcow2File(path, None, read_only=True)
    with pytest.raises(Qcow2FormatError):
        qcow2_info(path)


def test_header_cut_short(image, tmp_path):
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(image.read_bytes()[:90])
    with pytest.raises(Qcow2FormatError, match="too short"):
        Qcow2File(cut, None, read_only=True)


def test_l1_table_past_the_end(image):
    poke(image, 40, ">Q", 1 << 30)
    with pytest.raises(Qcow2FormatError, match="L1 table"):
        Qcow2File(image, None, read_only=True)


def test_unknown_incompatible_feature_bit(image):
    poke(image, 72, ">Q", 1 << 33)
    with pytest.raises(Qcow2UnsupportedError, match="unknown incompatible"):
        Qcow2File(image, None, read_only=True)


@pytest.mark.parametrize(
    "option,words",
    [
        ("extended_l2=on", "extended L2"),
        ("data_file=data.raw", "external data file"),
    ],
)
def test_unsupported_features_made_by_qemu_img(tmp_path, option, words):
    path = tmp_path / "feature.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", option, str(path), "1M"],
        check=True,
        cwd=tmp_path,
    )
    with pytest.raises(Qcow2UnsupportedError, match=words):
        Qcow2File(path, None, read_only=True)


def test_zstd_compression_if_qemu_has_it(tmp_path):
    path = tmp_path / "zstd.qcow2"
    made = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", str(path), "1M"],
        capture_output=True,
        check=False,
    )
    if made.returncode:
        pytest.skip("this qemu-img has no zstd")
    with pytest.raises(Qcow2UnsupportedError, match="compression"):
        Qcow2File(path, None, read_only=True)


def test_l2_table_past_the_end_of_the_file(image):
    h = header_of(image)
    poke(image, h.l1_table_offset, ">Q", fmt.OFLAG_COPIED | (64 * MIB))
    disk = Qcow2File(image, None, read_only=True)
    with pytest.raises(OSError) as exc:
        disk.pread(0, 4096)
    assert exc.value.errno == errno.EIO and "past the end" in str(exc.value)
    with pytest.raises(OSError):
        disk.extents(0, MIB)
    disk.close()


def test_misaligned_l2_offset(image):
    h = header_of(image)
    poke(image, h.l1_table_offset, ">Q", fmt.OFLAG_COPIED | 0x1200)
    disk = Qcow2File(image, None, read_only=True)
    with pytest.raises(OSError) as exc:
        disk.pread(0, 512)
    assert exc.value.errno == errno.EIO
    disk.close()


def test_data_cluster_past_the_end_of_the_file(image):
    poke(image, l2_offset_of(image), ">Q", fmt.OFLAG_COPIED | (64 * MIB))
    disk = Qcow2File(image, None, read_only=True)
    with pytest.raises(OSError) as exc:
        disk.pread(0, 4096)
    assert exc.value.errno == errno.EIO
    assert disk.pread(4096, 4096) == b"\x42" * 4096  # the rest still reads
    disk.close()


def test_reserved_bits_in_an_l2_entry(image):
    poke(image, l2_offset_of(image) + 8, ">Q", fmt.OFLAG_COPIED | (1 << 57) | 0x3000)
    disk = Qcow2File(image, None, read_only=True)
    with pytest.raises(OSError, match="reserved bits") as exc:
        disk.pread(4096, 4096)
    assert exc.value.errno == errno.EIO
    disk.close()


def test_corrupt_compressed_data(image):
    with open(image, "rb") as f:
        f.seek(l2_offset_of(image) + 16 * 8)
        entry = struct.unpack(">Q", f.read(8))[0]
    host, _ = fmt.compressed_location(entry, 12)
    poke(image, host, ">Q", 0xFFFF_FFFF_FFFF_FFFF)
    disk = Qcow2File(image, None, read_only=True)
    with pytest.raises(OSError) as exc:
        disk.pread(65536, 4096)
    assert exc.value.errno == errno.EIO
    disk.close()


def test_dirty_image_reads_but_is_not_writable(image):
    poke(image, 72, ">Q", fmt.INCOMPAT_DIRTY)
    Qcow2File(image, None, read_only=True).close()
    with pytest.raises(Qcow2UnsupportedError, match="dirty"):
        Qcow2File(image, None, read_only=False)


def test_corrupt_marked_image_reads_but_is_not_writable(image):
    poke(image, 72, ">Q", fmt.INCOMPAT_CORRUPT)
    disk = Qcow2File(image, None, read_only=True)
    assert disk.pread(0, 4096) == b"\x42" * 4096
    disk.close()
    with pytest.raises(Qcow2UnsupportedError, match="corrupt"):
        Qcow2File(image, None, read_only=False)


def test_image_with_internal_snapshot_reads_but_is_not_writable(image):
    subprocess.run(["qemu-img", "snapshot", "-c", "snap", str(image)], check=True)
    disk = Qcow2File(image, None, read_only=True)
    assert disk.pread(0, 4096) == b"\x42" * 4096
    disk.close()
    with pytest.raises(Qcow2UnsupportedError, match="snapshots"):
        Qcow2File(image, None, read_only=False)


def test_writes_to_a_read_only_image_are_refused(image):
    before = image.read_bytes()
    disk = Qcow2File(image, None, read_only=True)
    for call in (
        lambda: disk.pwrite(0, b"x"),
        lambda: disk.zero(0, 512),
        lambda: disk.trim(0, 4096),
    ):
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.EPERM
    disk.close()
    assert image.read_bytes() == before


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Qcow2File(tmp_path / "nope.qcow2", None, read_only=True)


@functools.cache
def small_image() -> bytes:
    """A tiny image whose metadata all lies in its first 8 KiB."""
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "small.qcow2")
        create(path, 64 * 1024, 512)
        qemu_io(
            path,
            "write -P 1 0 4096",
            "write -c 8192 512",
            "write -z 16384 1024",
            "write -P 2 30000 3000",
        )
        with open(path, "rb") as f:
            return f.read()


def _fuzzed(tmp_path, mutations):
    raw = bytearray(small_image())
    for at, value in mutations:
        if at < len(raw):
            raw[at] = value
    path = tmp_path / "fuzzed.qcow2"
    path.write_bytes(raw)
    return path


def _calls_answer_or_raise_oserror(calls) -> None:
    for call in calls:
        try:
            call()
        except OSError:
            pass


MUTATIONS = st.lists(st.tuples(st.integers(0, 8191), st.integers(0, 255)), min_size=1, max_size=6)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutations=MUTATIONS)
def test_fuzz_corrupted_metadata_reads(tmp_path, mutations):
    path = _fuzzed(tmp_path, mutations)
    try:
        disk = Qcow2File(path, None, read_only=True)
    except Qcow2FormatError:
        return
    length = min(disk.size, MIB)
    _calls_answer_or_raise_oserror(
        [
            lambda: disk.pread(0, length),
            lambda: disk.extents(0, length),
            lambda: disk.pread(8192, min(512, disk.size - 8192)),
        ]
    )
    disk.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutations=MUTATIONS)
def test_fuzz_corrupted_metadata_writes(tmp_path, mutations):
    path = _fuzzed(tmp_path, mutations)
    try:
        disk = Qcow2File(path, None, read_only=False)
    except Qcow2FormatError:
        return
    length = min(disk.size, MIB)
    _calls_answer_or_raise_oserror(
        [
            lambda: disk.pwrite(100, b"\x07" * min(length - 100, 20000)),
            lambda: disk.zero(0, length, may_trim=True),
            lambda: disk.pwrite(8000, b"\x08" * 700),
            disk.flush,
            disk.close,
        ]
    )
    disk.close()
