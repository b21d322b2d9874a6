"""Helpers for the qcow2 tests: make images with the real qemu-img/qemu-io,
read them back with qemu-img, and open chains with our layers."""

from __future__ import annotations

import json
import os
import subprocess

from vdfarm.block.layer import EXTENT_HOLE, EXTENT_ZERO
from vdfarm.block.qcow2 import Qcow2File
from vdfarm.block.raw import RawFile


def run(*args, cwd=None, input=None) -> str:
    """Run a qemu tool; raise with its stderr if it fails."""
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, input=input, check=False)
    if result.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} failed: {result.stderr or result.stdout}")
    return result.stdout


def create(
    path,
    size: int,
    cluster_size: int = 65536,
    compat: str = "1.1",
    backing=None,
    backing_fmt: str = "raw",
    refcount_bits: int = 16,
) -> None:
    """qemu-img create -f qcow2; `backing` is stored as given (relative to
    the image's directory when relative)."""
    options = f"cluster_size={cluster_size},compat={compat},refcount_bits={refcount_bits}"
    args = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", options]
    if backing is not None:
        args += ["-b", str(backing), "-F", backing_fmt]
    run(*args, str(path), str(size), cwd=os.path.dirname(path))


def qemu_io(path, *commands: str) -> None:
    """Run qemu-io commands on a qcow2 image, in order, in one process."""
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    run(*args, str(path))


def flatten(path) -> bytes:
    """The guest view of an image (and its backing chain), by qemu-img convert."""
    out = f"{path}.flat"
    run("qemu-img", "convert", "-O", "raw", str(path), out)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def check(path) -> subprocess.CompletedProcess:
    """qemu-img check (0 clean, 2 corrupt, 3 leaks only)."""
    return subprocess.run(
        ["qemu-img", "check", str(path)], capture_output=True, text=True, check=False
    )


def compare_with_raw(path, raw_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(path), str(raw_path)],
        capture_output=True,
        text=True,
        check=False,
    )


def qemu_map(path) -> list[dict]:
    return json.loads(run("qemu-img", "map", "--output=json", str(path)))


def our_extents(layer, step: int) -> list[tuple[int, int, int]]:
    """(start, stop, flags) of the whole layer, asked `step` bytes at a time."""
    out = []
    pos = 0
    while pos < layer.size:
        extents = layer.extents(pos, min(step, layer.size - pos))
        assert extents and all(e.length > 0 for e in extents)
        for extent in extents:
            out.append((pos, pos + extent.length, extent.flags))
            pos += extent.length
    assert pos == layer.size
    return out


def assert_extents_match_qemu(layer, path, step: int) -> None:
    """Our extents agree with qemu-img map wherever they overlap: data
    (no flag) iff qemu says data, ZERO iff qemu says zero, HOLE never on
    qemu data."""
    theirs = qemu_map(path)
    assert theirs[-1]["start"] + theirs[-1]["length"] == layer.size
    for start, stop, flags in our_extents(layer, step):
        for entry in theirs:
            if entry["start"] < stop and start < entry["start"] + entry["length"]:
                where = (start, stop, flags, entry)
                assert (flags == 0) == entry["data"], where
                assert bool(flags & EXTENT_ZERO) == entry["zero"], where
                assert not (flags & EXTENT_HOLE and entry["data"]), where


def open_chain(paths, writable_top: bool = False) -> list:
    """Open base (raw) + qcow2 deltas bottom-up; the last one writable if asked."""
    layers = [RawFile(paths[0], read_only=True)]
    for i, path in enumerate(paths[1:], start=1):
        layers.append(
            Qcow2File(path, layers[-1], read_only=not (writable_top and i == len(paths) - 1))
        )
    return layers


def close_all(layers) -> None:
    for layer in reversed(layers):
        layer.close()


def assert_qemu_agrees(path, model: bytes | bytearray, leaks_ok: bool = False) -> None:
    result = check(path)
    assert result.returncode in ((0, 3) if leaks_ok else (0,)), result.stdout + result.stderr
    model_path = f"{path}.model"
    with open(model_path, "wb") as f:
        f.write(model)
    result = compare_with_raw(path, model_path)
    os.unlink(model_path)
    assert result.returncode == 0, result.stdout + result.stderr
