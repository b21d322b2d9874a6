"""A tiny wrapper around the `qemu-img` command.

Rules: paths are passed as absolute paths (qemu-img reads `proto:...` in a
relative name as a protocol, an absolute path never is) — except backing file
names, which are plain relative names (no ':' or '/') resolved by qemu-img
against the image's own directory; every failure raises
`QemuImgError` carrying the first line of qemu-img's stderr; nothing here
decides policy (which formats are allowed is the store's business).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

QEMU_IMG = "qemu-img"


class QemuImgError(Exception):
    """qemu-img failed (or is missing); `stderr_line` is its first stderr line."""

    def __init__(self, message: str, stderr_line: str = "") -> None:
        super().__init__(message)
        self.stderr_line = stderr_line


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def run(args: list[str]) -> str:
    """Run `qemu-img ARGS` and return its stdout.

    Raises QemuImgError if qemu-img is missing or exits non-zero.
    """
    try:
        proc = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise QemuImgError("qemu-img is not installed or not on PATH") from exc
    if proc.returncode != 0:
        line = _first_line(proc.stderr) or f"exit status {proc.returncode}"
        raise QemuImgError(f"qemu-img {args[0]} failed: {line}", line)
    return proc.stdout


def _absolute(path: str | os.PathLike[str]) -> str:
    return str(Path(path).absolute())


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return `qemu-img info --output=json PATH` as a dict (probes the format).

    Raises QemuImgError if qemu-img cannot read the file.
    """
    out = run(["info", "--output=json", _absolute(path)])
    try:
        data = json.loads(out)
    except json.JSONDecodeError as exc:
        raise QemuImgError("qemu-img info printed something that is not JSON") from exc
    if not isinstance(data, dict):
        raise QemuImgError("qemu-img info printed an unexpected JSON value")
    return data


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    src_format: str,
    dst_format: str = "raw",
) -> None:
    """Convert SRC (of SRC_FORMAT) into a new DST_FORMAT file DST; keeps holes.

    Raises QemuImgError if the conversion fails.
    """
    run(["convert", "-f", src_format, "-O", dst_format, _absolute(src), _absolute(dst)])


def create(path: str | os.PathLike[str], fmt: str, size: int) -> None:
    """Create an empty image of FMT and SIZE bytes at PATH.

    Raises QemuImgError if qemu-img fails.
    """
    run(["create", "-q", "-f", fmt, _absolute(path), str(size)])


def create_overlay(path: str | os.PathLike[str], backing_name: str, backing_format: str) -> None:
    """Create an empty qcow2 at PATH whose backing file is BACKING_NAME (a plain
    name relative to PATH's directory) of BACKING_FORMAT; same virtual size.

    Raises QemuImgError if qemu-img fails (e.g. the backing file is missing).
    """
    run(
        [
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            _plain_name(backing_name),
            "-F",
            backing_format,
            _absolute(path),
        ]
    )


def rebase(path: str | os.PathLike[str], backing_name: str, backing_format: str) -> None:
    """Make the qcow2 PATH sit on BACKING_NAME (plain relative name) of
    BACKING_FORMAT, copying in whatever differs from the old backing chain
    (safe mode: the content of PATH does not change).

    Raises QemuImgError if qemu-img fails.
    """
    run(
        [
            "rebase",
            "-q",
            "-f",
            "qcow2",
            "-b",
            _plain_name(backing_name),
            "-F",
            backing_format,
            _absolute(path),
        ]
    )


CHECK_UNSUPPORTED = 63
CHECK_LEAKS_ONLY = 3


def check(path: str | os.PathLike[str], fmt: str, repair_leaks: bool = False) -> None:
    """Run `qemu-img check` on PATH (of FMT). Leaked clusters (space a crash
    left allocated but unused) are not an error; with REPAIR_LEAKS they are
    freed (the file must have no writer). Formats without checks (raw) pass.

    Raises QemuImgError if the image is corrupt or cannot be checked.
    """
    repair = ["-r", "leaks"] if repair_leaks else []
    try:
        proc = subprocess.run(
            [QEMU_IMG, "check", "-q", *repair, "-f", fmt, _absolute(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise QemuImgError("qemu-img is not installed or not on PATH") from exc
    if proc.returncode in (0, CHECK_LEAKS_ONLY, CHECK_UNSUPPORTED):
        return
    line = (
        _first_line(proc.stderr) or _first_line(proc.stdout) or (f"exit status {proc.returncode}")
    )
    raise QemuImgError(f"qemu-img check failed on {Path(path).name}: {line}", line)


def _plain_name(name: str) -> str:
    if not name or "/" in name or ":" in name or name.startswith("."):
        raise QemuImgError(f"backing file name {name!r} is not a plain relative name")
    return name


def compare(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True if the two images have identical content (`qemu-img compare`).

    Raises QemuImgError if either image cannot be read.
    """
    try:
        proc = subprocess.run(
            [QEMU_IMG, "compare", _absolute(a), _absolute(b)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise QemuImgError("qemu-img is not installed or not on PATH") from exc
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    line = _first_line(proc.stderr) or f"exit status {proc.returncode}"
    raise QemuImgError(f"qemu-img compare failed: {line}", line)
