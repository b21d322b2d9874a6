"""Shared fixtures for the block layer tests: small image files on tmp_path."""

import os
import random

import pytest

MIB = 1 << 20


def write_pattern(path, size: int, seed: int = 1) -> bytes:
    """Write `size` reproducible random bytes; return them."""
    data = random.Random(seed).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


@pytest.fixture
def sparse_file(tmp_path):
    """A 1 MiB sparse file with data at [64K, 128K) and [512K, 576K)."""
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as f:
        f.truncate(MIB)
        f.seek(64 * 1024)
        f.write(b"\xaa" * 64 * 1024)
        f.seek(512 * 1024)
        f.write(b"\xbb" * 64 * 1024)
        f.flush()
        os.fsync(f.fileno())
    return path
