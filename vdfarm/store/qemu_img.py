"""A tiny wrapper around the `qemu-img` command.

Rules: paths are passed as absolute paths (qemu-img reads `proto:...` in a
relative name as a protocol, an absolute path never is) — except backing file
names, which are plain relative names (no ':' or '/') resolved by qemu-img
against the image's own directory; every failure raises
`QemuImgError` carrying the first line of qemu-img's stderr (one line, always);
nothing here decides policy (which formats are allowed is the store's business).
- A run given `Limits` (every run on an untrusted image) starts qemu-img
  through util-linux `prlimit` with a CPU-time and an address-space limit,
  and is killed after a wall-clock timeout; without `prlimit` it is refused
  rather than run unlimited. (`prlimit` sets the limits in its own process
  before exec, so no Python runs between fork and exec in a threaded server.)
- A run given a fraction callback (`convert`, `rebase` with `on_fraction`)
  runs with `-p` and reports each `(NN.NN/100%)` qemu-img prints on stdout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QEMU_IMG = "qemu-img"
PRLIMIT = "prlimit"
MIB = 1 << 20
GIB = 1 << 30
PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one qemu-img run: CPU seconds (SIGXCPU, then
    SIGKILL a second later), address space in bytes, and a wall-clock timeout
    in seconds (None: no timeout)."""

    cpu_seconds: int
    address_space: int
    timeout: float | None = None

    def describe(self) -> str:
        return f"{self.cpu_seconds} s CPU, {self.address_space // MIB} MiB address space"


# `qemu-img info` reads headers only: it needs little of either.
INFO_LIMITS = Limits(cpu_seconds=30, address_space=1 * GIB, timeout=120)


def convert_limits(virtual_size: int) -> Limits:
    """Limits for converting an untrusted image of VIRTUAL_SIZE bytes: CPU
    time grows with the size (decompressing costs a few seconds per GiB, we
    allow 30), no wall-clock timeout (a big image on a slow disk takes long)."""
    gibs = -(-max(virtual_size, 0) // GIB)
    return Limits(cpu_seconds=120 + 30 * gibs, address_space=4 * GIB, timeout=None)


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


def _command(args: list[str], limits: Limits | None) -> list[str]:
    if limits is None:
        return [QEMU_IMG, *args]
    prlimit = shutil.which(PRLIMIT)
    if prlimit is None:
        raise QemuImgError(
            "prlimit (util-linux) is not installed: qemu-img is never run on an "
            "untrusted image without resource limits"
        )
    if shutil.which(QEMU_IMG) is None:
        raise QemuImgError("qemu-img is not installed or not on PATH")
    cpu, space = limits.cpu_seconds, limits.address_space
    return [prlimit, f"--cpu={cpu}:{cpu + 1}", f"--as={space}:{space}", "--", QEMU_IMG, *args]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _watched(
    command: list[str],
    on_fraction: Callable[[float], None],
    pass_fds: Sequence[int],
    timeout: float | None,
) -> subprocess.CompletedProcess[str]:
    """Run COMMAND (with `-p`), calling ON_FRACTION with each percentage it
    prints on stdout; stderr is read beside it. Raises FileNotFoundError,
    subprocess.TimeoutExpired (the process is killed first)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=tuple(pass_fds)
    )
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
    reader.start()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire) if timeout is not None else None
    if timer is not None:
        timer.start()
    out = bytearray()
    try:
        while chunk := os.read(stdout.fileno(), 4096):
            out += chunk
            *seen, rest = out.split(b"\r")
            for piece in seen:
                if found := PERCENT.search(piece):
                    on_fraction(float(found.group(1)) / 100)
            out = bytearray(rest)
        proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
        stdout.close()
        stderr.close()
    if expired.is_set() and timeout is not None:
        raise subprocess.TimeoutExpired(command, timeout)
    text = b"".join(errors).decode(errors="replace")
    return subprocess.CompletedProcess(command, proc.returncode, out.decode(errors="replace"), text)


def run(
    args: list[str],
    *,
    limits: Limits | None = None,
    pass_fds: Sequence[int] = (),
    on_fraction: Callable[[float], None] | None = None,
) -> str:
    """Run `qemu-img ARGS` (under LIMITS, if given; with the open file
    descriptors PASS_FDS inherited) and return its stdout. With ON_FRACTION,
    ARGS must hold `-p`: each percentage qemu-img prints is passed to it as
    a fraction (and the stdout returned is what follows the last one).

    Raises QemuImgError if qemu-img (or, with LIMITS, prlimit) is missing,
    exits non-zero, is killed (a limit hit) or outlives the timeout.
    """
    verb = args[0]
    timeout = limits.timeout if limits else None
    try:
        if on_fraction is None:
            proc = subprocess.run(
                _command(args, limits),
                capture_output=True,
                text=True,
                errors="replace",
                check=False,
                pass_fds=tuple(pass_fds),
                timeout=timeout,
            )
        else:
            proc = _watched(_command(args, limits), on_fraction, pass_fds, timeout)
    except FileNotFoundError as exc:
        raise QemuImgError("qemu-img is not installed or not on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise QemuImgError(
            f"qemu-img {verb} was stopped: it did not finish within {exc.timeout:g} s"
        ) from None
    if proc.returncode == 0:
        return proc.stdout
    line = _first_line(proc.stderr)
    if proc.returncode < 0:
        limit_note = f" (limits: {limits.describe()})" if limits else ""
        detail = f": {line}" if line else ""
        raise QemuImgError(
            f"qemu-img {verb} was stopped by {_signal_name(-proc.returncode)}{limit_note}{detail}",
            line,
        )
    line = line or f"exit status {proc.returncode}"
    raise QemuImgError(f"qemu-img {verb} failed: {line}", line)


def _absolute(path: str | os.PathLike[str]) -> str:
    return str(Path(path).absolute())


def info(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    limits: Limits | None = None,
    pass_fds: Sequence[int] = (),
) -> dict[str, Any]:
    """Return `qemu-img info --output=json PATH` as a dict; the image is
    opened as FMT (`-f`), or probed if FMT is None (only for trusted files).

    Raises QemuImgError if qemu-img cannot read the file (or a limit stops it).
    """
    fmt_args = ["-f", fmt] if fmt else []
    out = run(
        ["info", "--output=json", *fmt_args, _absolute(path)], limits=limits, pass_fds=pass_fds
    )
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
    limits: Limits | None = None,
    pass_fds: Sequence[int] = (),
    on_fraction: Callable[[float], None] | None = None,
) -> None:
    """Convert SRC (of SRC_FORMAT) into a new DST_FORMAT file DST; keeps holes.
    ON_FRACTION, if given, hears how far it got (0.0-1.0).

    Raises QemuImgError if the conversion fails (or a limit stops it).
    """
    shown = ["-p"] if on_fraction is not None else []
    run(
        ["convert", *shown, "-f", src_format, "-O", dst_format, _absolute(src), _absolute(dst)],
        limits=limits,
        pass_fds=pass_fds,
        on_fraction=on_fraction,
    )


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


def rebase(
    path: str | os.PathLike[str],
    backing_name: str,
    backing_format: str,
    on_fraction: Callable[[float], None] | None = None,
) -> None:
    """Make the qcow2 PATH sit on BACKING_NAME (plain relative name) of
    BACKING_FORMAT, copying in whatever differs from the old backing chain
    (safe mode: the content of PATH does not change). ON_FRACTION, if
    given, hears how far it got (0.0-1.0).

    Raises QemuImgError if qemu-img fails.
    """
    run(
        [
            "rebase",
            "-p" if on_fraction is not None else "-q",
            "-f",
            "qcow2",
            "-b",
            _plain_name(backing_name),
            "-F",
            backing_format,
            _absolute(path),
        ],
        on_fraction=on_fraction,
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
