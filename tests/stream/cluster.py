"""A farm of several real `vdfarm server run` processes on loopback, sharing
one database, for the multi-server tests.

Rules: every server has its own data directory (its own store) and its own
NBD and API ports, fixed for its life so a restarted server is reachable
where it was; vDisks are imported on the first server and copied into the
others' stores by hand (replication is not what these tests test); servers
are stopped (SIGTERM, then SIGKILL) at teardown.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
from pathlib import Path

import httpx

from tests.conftest import VDFARM, free_port, wait_port
from tests.stream import conftest as stream_fixtures
from tests.stream.rawclient import RawClient


class ClusterServer:
    """One server process of the farm."""

    def __init__(self, root: Path, name: str, db_url: str) -> None:
        self.name = name
        self.db_url = db_url
        self.data_dir = root / name
        self.nbd_port = free_port()
        self.api_port = free_port()
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = VDFARM + ["--data-dir", str(self.data_dir), "--db", self.db_url, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"vdfarm {' '.join(args)} on {self.name} failed "
                f"({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def cli_json(self, *args: str):
        return json.loads(self.cli("--json", *args).stdout)

    def start(self, *extra: str) -> None:
        self.launch(*extra)
        self.wait_up()

    def launch(self, *extra: str) -> None:
        """Start the process; `wait_up` waits for its ports."""
        with open(self.log_path, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                VDFARM
                + [
                    "--data-dir",
                    str(self.data_dir),
                    "--db",
                    self.db_url,
                    "server",
                    "run",
                    "--nbd-port",
                    str(self.nbd_port),
                    "--api-port",
                    str(self.api_port),
                    *extra,
                ],
                stdout=log,
                stderr=log,
            )

    def wait_up(self) -> None:
        wait_port(self.nbd_port, self.proc, log_path=self.log_path)
        wait_port(self.api_port, self.proc, log_path=self.log_path)

    def kill(self) -> None:
        """SIGKILL: the server dies without a word to anyone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(
            method, f"http://127.0.0.1:{self.api_port}/api/v1{path}", timeout=10, **kwargs
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """Servers by name; `init` them, `start` them, log devices in."""

    def __init__(self, root: Path, db_url: str, names: list[str]) -> None:
        self.root = root
        self.servers = {name: ClusterServer(root, name, db_url) for name in names}
        self.first = self.servers[names[0]]

    def init(self) -> None:
        for server in self.servers.values():
            server.cli("init", "--name", server.name)

    def copy_store(self, vdisk: str) -> None:
        """Put the first server's copy of VDISK into every other store."""
        source = self.first.data_dir / "store" / vdisk
        for server in self.servers.values():
            if server is not self.first:
                target = server.data_dir / "store" / vdisk
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)

    def start(self, *extra: str) -> None:
        """Start every server at once; return when all listen."""
        for server in self.servers.values():
            server.launch(*extra)
        for server in self.servers.values():
            server.wait_up()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def by_port(self, nbd_port: int) -> ClusterServer:
        [server] = [s for s in self.servers.values() if s.nbd_port == nbd_port]
        return server

    def login(self, device: str, via: ClusterServer | None = None) -> dict:
        """POST /login on VIA (default: the first server up) for DEVICE."""
        candidates = [via] if via else [s for s in self.servers.values() if s.proc]
        response = candidates[0].api("POST", "/login", json={"device": device})
        assert response.status_code == 200, response.text
        return response.json()

    def connect(
        self, device: str, via: ClusterServer | None = None
    ) -> tuple[ClusterServer, RawClient]:
        """Log DEVICE in, then open its NBD export where the login answer
        says: the chosen server's advertised host and NBD port."""
        answer = self.login(device, via)
        chosen = answer["server"]
        server = self.by_port(chosen["nbd_port"])
        client = RawClient(chosen["nbd_port"], host=chosen["host"])
        client.connect(device)
        return server, client

    def connected_counts(self) -> dict[str, int]:
        """Server name -> connected devices, as the first server up reports."""
        up = [s for s in self.servers.values() if s.proc]
        rows = up[0].api("GET", "/servers").json()
        return {row["name"]: row["connected"] for row in rows}

    def server_rows(self, via: ClusterServer) -> dict[str, dict]:
        return {row["name"]: row for row in via.api("GET", "/servers").json()}


# Several server processes are slower to settle: wait longer, poll less often.
wait_until = functools.partial(stream_fixtures.wait_until, timeout=60.0, step=0.2)
