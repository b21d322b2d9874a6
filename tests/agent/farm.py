"""One real three-server farm for every agent test of a run: three `vdfarm
server run` processes on one PostgreSQL database, each vDisk imported once
(with the devices of the tests that use it) and copied into every store
(identical copies) — but a private vDisk, which lives on its home (the
first server) only, as replication leaves it (docs/replication.md).

Rules: built once (starting three servers is the cost; tests share it) by
the package fixture in tests/agent/conftest.py; every test begins and ends
with all three servers up (`all_up`: a stopped one continued, a killed one
restarted on its ports); each test uses its own devices, so the audit rows
and status it checks are its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.agent.agent_process import AgentProcess
from tests.stream.cluster import Cluster, ClusterServer

SERVERS = ("s1", "s2", "s3")


@dataclass
class AgentFarm:
    """The cluster, its vDisks' source images by name, an operator token."""

    cluster: Cluster
    root: Path
    images: dict[str, Path] = field(default_factory=dict)
    token: str = ""

    @property
    def urls(self) -> str:
        """Every server's login URL, for `--farm`."""
        return ",".join(f"http://127.0.0.1:{s.api_port}" for s in self.cluster.servers.values())

    @property
    def servers(self) -> dict[str, ClusterServer]:
        return self.cluster.servers

    def build(
        self, vdisks: dict[str, tuple[Path, tuple[str, ...]]], private: tuple[str, ...] = ()
    ) -> None:
        """Initialise the servers, import each vDisk NAME: (IMAGE, DEVICES)
        as a standard vDisk with a device-side RAM cache, copy it into
        every store, start the servers; a vDisk named in PRIVATE is
        imported in private mode and stays in the first server's store
        (its home). Independent commands run side by side (each is a
        process that spends most of its time starting)."""
        first = self.cluster.first
        others = [s for s in self.servers.values() if s is not first]
        first.cli("init", "--name", first.name)  # makes the database's tables
        with ThreadPoolExecutor(4) as pool:
            _all(pool, [lambda s=s: s.cli("init", "--name", s.name) for s in others])
            _all(
                pool,
                [
                    lambda n=name, i=image: first.cli(
                        "vdisk", "import", n, str(i), *_import_options(n in private)
                    )
                    for name, (image, _) in vdisks.items()
                ],
            )
            _all(
                pool,
                [
                    lambda d=device, n=name: first.cli("device", "add", d, "--vdisk", n)
                    for name, (_, devices) in vdisks.items()
                    for device in devices
                ],
            )
        for name, (image, _) in vdisks.items():
            if name not in private:
                self.cluster.copy_store(name)
            self.images[name] = image
        self.cluster.start()
        self.token = first.cli_json("token", "add", "agents", "--role", "operator")["secret"]

    def all_up(self) -> None:
        """Every server running: continue the stopped, restart the killed."""
        restarted = []
        for server in self.servers.values():
            if server.proc is not None and server.proc.poll() is None:
                server.resume()
            else:
                server.proc = None
                server.launch()
                restarted.append(server)
        for server in restarted:
            server.wait_up()

    def agent(self, device: str, **options) -> AgentProcess:
        """A running agent for DEVICE (see AgentProcess), listening."""
        agent = AgentProcess(self.root, self.urls, device, token=self.token, **options)
        try:
            agent.wait_listening()
        except BaseException:
            agent.stop()
            raise
        return agent

    def serving(self, agent: AgentProcess) -> ClusterServer:
        """The server AGENT streams from now."""
        return self.servers[agent.status_now()["server"]]

    def up_server(self) -> ClusterServer:
        """A server that is running and not stopped (for the CLI: any will do)."""
        for server in self.servers.values():
            if server.proc is not None and server.proc.poll() is None:
                state = _process_state(server.proc.pid)
                if state != "T":
                    return server
        raise AssertionError("no server is up")

    def reported_failovers(self, device: str, count: int, timeout: float = 60) -> list[dict]:
        """DEVICE's `device.failover` audit rows, once there are COUNT."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [
                row
                for row in self.up_server().cli_json("audit", "list", "--all")
                if row["action"] == "device.failover" and row["target_name"] == device
            ]
            if len(rows) >= count:
                return rows
            assert time.monotonic() < deadline, f"audited failovers of {device}: {rows}"
            time.sleep(0.5)


def _import_options(private: bool) -> tuple[str, ...]:
    """`vdisk import` options: private mode (its device writes the vDisk on
    the home; no device-side cache), else a device-side RAM cache."""
    return ("--mode", "private") if private else ("--write-cache", "device-ram")


def _all(pool: ThreadPoolExecutor, calls: list[Callable[[], object]]) -> None:
    """Run CALLS side by side; raise the first failure."""
    for future in [pool.submit(call) for call in calls]:
        future.result()


def _process_state(pid: int) -> str:
    """The one-letter state of process PID (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
