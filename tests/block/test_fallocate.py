"""The ctypes fallocate wrapper against a real file."""

import errno
import os

import pytest

from vdfarm.block import fallocate as fa


def test_punch_hole_and_zero_range(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"\xff" * 65536)
    fd = os.open(path, os.O_RDWR)
    try:
        fa.punch_hole(fd, 0, 16384)
        fa.zero_range(fd, 32768, 4096)
        data = os.pread(fd, 65536, 0)
        assert data == bytes(16384) + b"\xff" * 16384 + bytes(4096) + b"\xff" * 28672
        assert os.fstat(fd).st_size == 65536
        assert os.lseek(fd, 0, os.SEEK_DATA) == 16384
    finally:
        os.close(fd)


def test_errors_carry_the_errno():
    with pytest.raises(OSError) as exc:
        fa.punch_hole(-1, 0, 4096)
    assert exc.value.errno == errno.EBADF
    assert not fa.is_unsupported(exc.value)
    assert fa.is_unsupported(OSError(errno.EOPNOTSUPP, "x"))


def test_call_if_supported(tmp_path):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "no")

    assert not fa.call_if_supported(unsupported, 0, 0, 4096)
    with pytest.raises(OSError) as exc:
        fa.call_if_supported(fa.punch_hole, -1, 0, 4096)
    assert exc.value.errno == errno.EBADF
    path = tmp_path / "f"
    path.write_bytes(b"\xff" * 8192)
    fd = os.open(path, os.O_RDWR)
    try:
        assert fa.call_if_supported(fa.punch_hole, fd, 0, 4096)
        assert os.pread(fd, 8192, 0) == bytes(4096) + b"\xff" * 4096
    finally:
        os.close(fd)
