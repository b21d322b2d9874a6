"""Helpers for replica copy tests: the chunk list of some bytes, and a small
tmpfs for "the disk is full" (the tests run as root; they skip otherwise)."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vdfarm.store.chunks import ChunkList
from vdfarm.store.wire_frames import has_packable_frame


def list_of(data: bytes, chunk_size: int, *, older: bool = False) -> ChunkList:
    """The chunk list of DATA in pieces of CHUNK_SIZE (as an older vdfarm
    sends it if OLDER: without prefixes and packable chunks)."""
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    plain = ChunkList(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=chunk_size,
        chunks=tuple(hashlib.sha256(p).hexdigest() for p in pieces),
    )
    if older:
        return plain
    return ChunkList(
        size=plain.size,
        sha256=plain.sha256,
        chunk_size=chunk_size,
        chunks=plain.chunks,
        prefixes=tuple(
            hashlib.sha256(data[: i * chunk_size + len(p)]).hexdigest()
            for i, p in enumerate(pieces)
        ),
        packable=tuple(
            i for i, p in enumerate(pieces) if has_packable_frame(p) and p != bytes(len(p))
        ),
    )


def pieces_of(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "8m") -> Iterator[Path]:
    """DIRECTORY with a tmpfs of SIZE mounted on it for the block."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def listing(root: Path) -> list[tuple[str, int]]:
    """(relative path, size) of everything under ROOT."""
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")
    )
