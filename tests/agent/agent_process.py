"""A real `vdfarm agent` process for the farm tests: start it, wait until it
listens, read its status, stop it.

Rules: the agent's output goes to a log file beside its other files (shown
when it dies early); a TCP agent gets a --status-file there too (the
default under /run is not the test's); the process is always stopped
(SIGTERM, then SIGKILL) by `stop` or when the `with` block ends.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import VDFARM


class AgentProcess:
    """`vdfarm agent --device DEVICE` against the farm URLS, listening on
    unix:ROOT/run/DEVICE.sock, or on tcp:127.0.0.1:TCP_PORT when given."""

    def __init__(
        self,
        root: Path,
        urls: str,
        device: str,
        *,
        tcp_port: int | None = None,
        token: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.device = device
        self.log_path = root / f"agent-{device}.log"
        self.socket = root / "run" / f"{device}.sock"
        self.tcp_port = tcp_port
        self.listen = f"tcp:127.0.0.1:{tcp_port}" if tcp_port else f"unix:{self.socket}"
        self.status_file = root / f"agent-{device}.status.json"
        argv = [*VDFARM, "agent", "--farm", urls, "--device", device, "--listen", self.listen]
        argv += ["--status-file", str(self.status_file), *extra]
        if token is not None:
            token_file = root / f"agent-{device}.token"
            token_file.write_text(token)
            token_file.chmod(0o600)
            argv += ["--token-file", str(token_file)]
        with open(self.log_path, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)

    @property
    def uri(self) -> str:
        """The libnbd / qemu URI of the device's disk at this agent."""
        if self.tcp_port:
            return f"nbd://127.0.0.1:{self.tcp_port}/{self.device}"
        return f"nbd+unix:///{self.device}?socket={self.socket}"

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _listening(self) -> bool:
        if not self.tcp_port:
            return self.socket.exists()
        try:
            with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=0.5):
                return True
        except OSError:
            return False

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self._listening():
            assert self.proc.poll() is None, f"the agent died: {self.log()}"
            assert time.monotonic() < deadline, f"the agent never listened: {self.log()}"
            time.sleep(0.05)

    def status(self) -> dict:
        """What `vdfarm agent status --json` shows."""
        out = subprocess.run(
            [*VDFARM, "agent", "status", "--listen", self.listen, "--json"]
            + ["--status-file", str(self.status_file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout)

    def status_now(self) -> dict:
        """The status file as the agent last wrote it (cheaper than `status`)."""
        return json.loads(self.status_file.read_text())

    def settled_failovers(self, count: int, timeout: float = 60) -> list[dict]:
        """The first COUNT failovers once each has its pause (the first good
        reply after it came); fails after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.status_now()["failovers"]
            if len(records) >= count and all(r["pause_ms"] is not None for r in records[:count]):
                return records[:count]
            assert time.monotonic() < deadline, f"failovers so far: {records}\n{self.log()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
