"""Progress as people and scripts see it: a 512 MiB `vdfarm vdisk import`
run as a real process on a pseudo-terminal (a bar reaching 100 %), piped
(plain lines on stderr), and with --json (the result alone)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

MIB = 1 << 20
SIZE = 512 * MIB
RESULT = "imported vDisk golden (512.0 MiB, standard, write cache server-disk)"
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PLAIN = re.compile(
    r"^import golden \((copy|hash)\): [0-9.]+ (B|KiB|MiB) of 512\.0 MiB \((\d+) %\)"
    r"(, [0-9.]+ (B|KiB|MiB|GiB)/s)?(, (done|\S+ left))?$"
)


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDFARM_")}
    return env | {"TERM": "xterm", "COLUMNS": "120"}


def _vdfarm(data):
    return [sys.executable, "-m", "vdfarm", "--data-dir", str(data)]


@pytest.fixture
def image(tmp_path):
    """A sparse 512 MiB raw disk with a little data at both ends."""
    path = tmp_path / "big.raw"
    with open(path, "wb") as fh:
        fh.write(b"\x5a" * 65536)
        fh.seek(SIZE - 65536)
        fh.write(b"\xa5" * 65536)
    return path


@pytest.fixture
def data(tmp_path):
    data = tmp_path / "data"
    init = subprocess.run(
        [*_vdfarm(data), "init", "--name", "srv1"], capture_output=True, text=True, env=_env()
    )
    assert init.returncode == 0, init.stderr
    return data


def _on_pty(argv):
    """Run ARGV with stdin, stdout and stderr on a new 120x40 terminal;
    return its exit status and everything it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=_env())
    os.close(slave)
    out = bytearray()
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        status = proc.wait(timeout=300)
    return status, out.decode(errors="replace")


def test_a_terminal_shows_a_bar_that_reaches_100_percent(data, image):
    status, screen = _on_pty([*_vdfarm(data), "vdisk", "import", "golden", str(image)])
    assert status == 0, screen
    assert "\x1b[" in screen  # drawn, not printed: a terminal gets escapes
    frames = [ESCAPES.sub("", f) for f in re.split(r"[\r\n]+", screen)]
    bars = [f for f in frames if f.startswith("import golden (") and "/512.0 MiB" in f]
    assert bars, screen
    finished = [f for f in bars if "(hash)" in f and "100%" in f and "512.0/512.0 MiB" in f]
    assert finished, bars[-3:]
    assert any("(copy)" in f and "100%" in f for f in bars), bars[-3:]
    assert frames[-1].strip() == RESULT or RESULT in frames, frames[-3:]
    assert not any(PLAIN.match(f) for f in frames)  # no plain lines on a terminal


def test_piped_it_prints_plain_lines_on_stderr(data, image):
    run = subprocess.run(
        [*_vdfarm(data), "vdisk", "import", "golden", str(image)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == RESULT + "\n"
    lines = run.stderr.splitlines()
    assert lines and "\x1b" not in run.stderr
    assert all(PLAIN.match(line) for line in lines), lines
    steps = [PLAIN.match(line).group(1) for line in lines]
    assert steps == sorted(steps)  # the copy, then the hash
    for step in ("copy", "hash"):
        last = [line for line in lines if f"({step})" in line][-1]
        assert "512.0 MiB of 512.0 MiB (100 %)" in last and last.endswith(", done"), last


def test_with_json_only_the_result(data, image):
    run = subprocess.run(
        [*_vdfarm(data), "--json", "vdisk", "import", "golden", str(image)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    result = json.loads(run.stdout)
    assert (result["name"], result["size"]) == ("golden", SIZE)


def test_with_json_on_a_terminal_nothing_is_drawn(data, image):
    status, screen = _on_pty([*_vdfarm(data), "vdisk", "import", "golden", str(image), "--json"])
    assert status == 0, screen
    assert "\x1b" not in screen and "import golden (" not in screen
    assert json.loads(screen)["name"] == "golden"
