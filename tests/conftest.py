"""Shared fixtures: a data directory, the vdfarm CLI, a running server.

Rules: servers listen on 127.0.0.1 on free ports and are stopped (SIGTERM,
then SIGKILL) at teardown; every fixture cleans up what it started.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

VDFARM = [sys.executable, "-m", "vdfarm"]

# The CLI reads these from the environment; a test run must not inherit a
# real farm from the shell that started it.
for _variable in (
    "VDFARM_DB",
    "VDFARM_FARM",
    "VDFARM_TOKEN",
    "VDFARM_TOKEN_FILE",
    "VDFARM_CA_FILE",
    "VDFARM_DATA_DIR",
):
    os.environ.pop(_variable, None)


# Ports handed to servers come from below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range starts at 32768): a port the kernel can
# also give to an outgoing connection (the CLI's to PostgreSQL, say) may
# be taken between the pick and the server's bind, which failed a run.
_PORT_RANGE = (20000, 32767)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing on 127.0.0.1 holds now, never handed out before in
    this run, outside the kernel's range of ports for outgoing connections."""
    for _ in range(1000):
        port = random.randint(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last LINES of the log at PATH, indented, for an error message."""
    if path is None or not path.exists():
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(["", f"last lines of {path}:", *("  " + line for line in tail)])


def wait_port(
    port: int,
    proc: subprocess.Popen | None = None,
    timeout: float = 30.0,
    log_path: Path | None = None,
) -> None:
    """Return once something accepts on PORT; raise (with the tail of
    LOG_PATH) when PROC exits first or TIMEOUT passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}{log_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}{log_tail(log_path)}")


class Farm:
    """A data directory driven through the real `vdfarm` command line."""

    def __init__(self, data_dir: Path, db_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.server: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    def base_args(self) -> list[str]:
        args = VDFARM + ["--data-dir", str(self.data_dir)]
        if self.db_url:
            args += ["--db", self.db_url]
        return args

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.base_args() + list(args), capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"vdfarm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def start(
        self,
        grace: float = 5.0,
        port: int | None = None,
        lease: float | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> int:
        """Start `server run` (EXTRA_ARGS appended); return its NBD port."""
        self.port = port or free_port()
        extra = ["--lease", str(lease)] if lease is not None else []
        extra += extra_args
        with open(self.log_path, "ab") as log:  # the child keeps its own copy
            self.server = subprocess.Popen(
                self.base_args()
                + [
                    "server",
                    "run",
                    "--nbd-port",
                    str(self.port),
                    "--api-port",
                    "0",
                    "--grace",
                    str(grace),
                    *extra,
                ],
                stdout=log,
                stderr=log,
            )
        wait_port(self.port, self.server, log_path=self.log_path)
        return self.port

    def stop(self, sig_kill: bool = False) -> int | None:
        if self.server is None:
            return None
        if sig_kill:
            self.server.kill()
        else:
            self.server.terminate()
        try:
            rc = self.server.wait(20)
        except subprocess.TimeoutExpired:
            self.server.kill()
            rc = self.server.wait(5)
        self.server = None
        return rc

    def uri(self, export: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{export}"

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def copy_data_dir(template: Path, dest: Path) -> None:
    """A private copy of a template data directory (sparse files stay sparse).
    Nothing in a data directory depends on its own path, so copies are
    independent farms."""
    subprocess.run(["cp", "-a", "--sparse=always", str(template), str(dest)], check=True)


@pytest.fixture(scope="session")
def initialised_template(tmp_path_factory) -> Path:
    """An initialised, empty data directory, made once per test run."""
    f = Farm(tmp_path_factory.mktemp("template") / "data")
    f.cli("init")
    return f.data_dir


@pytest.fixture
def farm(tmp_path, initialised_template):
    """A fresh initialised farm (a copy of the template), stopped at teardown."""
    copy_data_dir(initialised_template, tmp_path / "data")
    f = Farm(tmp_path / "data")
    yield f
    f.stop()


def make_test_image(path: Path, size: int = 64 << 20, seed: int = 1) -> Path:
    """A raw image with data in some places and holes in others."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(0, size, 4 << 20):  # 1 MiB of data every 4 MiB
            f.seek(i)
            f.write(bytes([(seed + i // (4 << 20) + j) % 251 for j in range(256)]) * 4096)
    return path


@pytest.fixture(scope="session")
def test_image(tmp_path_factory):
    """The source image (read-only: tests must not change it)."""
    return make_test_image(tmp_path_factory.mktemp("image") / "source.raw")


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
