"""A PostgreSQL server of the test's own, which the test may stop and start.

Tests that take the farm database away (offline-database behaviour) must not
stop the machine's shared PostgreSQL, which other tests use. This starts a
real PostgreSQL (the machine's binaries: initdb, pg_ctl) in a temporary
directory on a free loopback port, run as the `postgres` system user (the
server refuses root), with trust authentication for user `root`.
Skips the test when the binaries or the user are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """One PostgreSQL instance: `start()`, `stop()`, `url`, `close()`."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        try:
            self._user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no postgres system user to run a private PostgreSQL")
        self._bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="vdfarm-pg-"))
        os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://root@127.0.0.1:{self.port}/farm"
        self._as_postgres(
            str(self._bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "root",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.start()
        self._as_postgres(
            str(self._bin / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "root",
            "farm",
        )

    def _as_postgres(self, *argv: str) -> None:
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            capture_output=True,
            text=True,
            cwd=self.dir,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stdout}{proc.stderr}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.dir} -c fsync=off"
        )
        self._as_postgres(
            str(self._bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        """Stop the server now (fast mode: open connections are cut)."""
        self._as_postgres(
            str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"
        )

    def close(self) -> None:
        """Stop (if running) and delete everything."""
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self._bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            cwd=self.dir,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)
