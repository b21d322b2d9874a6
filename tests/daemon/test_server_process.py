"""The daemon as a real process: SIGTERM stops every task within 5 s and
exits 0; a task that dies takes the whole process down with a non-zero
status and its name in the last log line."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, make_test_image, wait_port
from tests.stream.rawclient import CMD_READ, RawClient

REPO = Path(__file__).resolve().parents[2]
SHUTDOWN_BOUND_S = 5.0  # a correctness bound the issue sets, not a speed figure
EVERY_TASK = {
    "replication",
    "executors",
    "sessions",
    "store",
    "nbd-listener",
    "api",
    "heartbeat",
    "move-orders",
    "cache-usage",
    "reconcile",
    "audit-retention",
    "auto-rebalance",
}
STOP_ORDER = [  # by phase: stop accepting, API, periodic, sessions, executors
    "nbd-listener",
    "api",
    "replication",
    "auto-rebalance",
    "audit-retention",
    "reconcile",
    "cache-usage",
    "move-orders",
    "heartbeat",
    "store",
    "sessions",
    "executors",
]


def task_lines(log: str, what: str) -> list[str]:
    """Names of the tasks the log says WHAT ("started"/"stopped"), in order."""
    return re.findall(rf"vdfarm\.daemon: task (\S+) {what}$", log, re.MULTILINE)


def wait_for_line(farm, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in farm.server_log():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the server log:\n{farm.server_log()}")


@pytest.fixture
def with_device(farm, tmp_path):
    image = make_test_image(tmp_path / "golden.raw", size=4 << 20)
    farm.cli("vdisk", "import", "golden", str(image), "--mode", "standard")
    farm.cli("device", "add", "pc1", "--vdisk", "golden")
    return farm


def test_sigterm_stops_every_task_in_order_within_5_s_and_exits_0(with_device):
    farm = with_device
    port = free_port()
    crashed_import = farm.data_dir / "store" / ".import-crashed"  # what a killed import left
    crashed_import.mkdir()
    (crashed_import / "base.raw").write_bytes(b"half a copy")
    with open(farm.log_path, "ab") as log:
        proc = subprocess.Popen(
            farm.base_args()
            + ["server", "run", "--nbd-port", str(port), "--api-port", "0"]
            + ["--auto-rebalance", "60"],
            stdout=log,
            stderr=log,
        )
    farm.server = proc  # stopped at teardown if the test fails first
    wait_port(port, proc)
    wait_for_line(farm, "vdfarm: serving NBD on", proc)
    assert not crashed_import.exists()  # the store task's start removed it
    client = RawClient(port)
    client.connect("pc1")  # a live session for the shutdown to end
    assert client.call(CMD_READ, 0, 4096)[0] == 0
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(SHUTDOWN_BOUND_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {SHUTDOWN_BOUND_S} s after SIGTERM") from None
    finally:
        client.close()
    assert status == 0, farm.server_log()
    assert time.monotonic() - started < SHUTDOWN_BOUND_S
    log = farm.server_log()
    assert set(task_lines(log, "started")) == EVERY_TASK
    assert task_lines(log, "stopped") == STOP_ORDER  # every task, none left running
    assert "device pc1: session ended" in log
    assert log.rstrip().endswith("vdfarm: stopped")


def test_a_task_that_dies_stops_the_process_non_zero_naming_the_task(farm):
    port = free_port()
    with open(farm.log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.daemon.crashing_server", str(farm.data_dir), str(port)],
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
    farm.server = proc
    try:
        status = proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("a server with a dead task kept running") from None
    log = farm.server_log()
    assert status != 0, log
    assert "task crasher died" in log and "the crasher broke" in log
    assert set(task_lines(log, "stopped")) == set(task_lines(log, "started"))
    last = log.rstrip().splitlines()[-1]
    assert "crasher" in last, last
    assert "vdfarm: stopped" not in log


def test_a_task_that_cannot_start_stops_what_started_and_exits_1(farm):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = farm.cli("server", "run", "--nbd-port", str(port), "--no-api", check=False)
    assert run.returncode == 1, run.stderr
    assert "task nbd-listener failed to start" in run.stderr
    assert set(task_lines(run.stderr, "stopped")) == set(task_lines(run.stderr, "started"))
    assert "vdfarm: serving NBD" not in run.stdout
