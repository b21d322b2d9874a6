"""Two real servers on one real PostgreSQL: what a device's agent needs of
the farm when its server dies. The device logs in (the answer names the
copy's hash and that it may fail over), streams from A, A is SIGKILLed;
at once (A's session row still in the database, its heartbeat not yet
timed out) it logs in again excluding A, B serves it, the farm's records
say B, and the agent's failover report is audited and shown.

Devices are raw NBD clients (tests/stream/rawclient.py); the export's
description is read with a real client (nbdinfo).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import make_test_image
from tests.farm.postgres import fresh_postgres_url
from tests.stream.cluster import Cluster
from tests.stream.rawclient import CMD_READ, RawClient

SIZE = 4 << 20


@pytest.fixture(scope="session")
def db_kind() -> str:
    """PostgreSQL only: a farm of several servers."""
    return "postgresql"


@pytest.fixture
def cluster(tmp_path):
    with fresh_postgres_url() as url:
        farm = Cluster(tmp_path, url, ["a", "b"])
        try:
            farm.init()
            image = make_test_image(tmp_path / "golden.raw", size=SIZE)
            farm.first.cli("vdisk", "import", "golden", str(image), "--write-cache", "device-ram")
            farm.first.cli("device", "add", "pc1", "--vdisk", "golden")
            farm.copy_store("golden")
            yield farm
        finally:
            farm.stop()


def operator_token(server) -> str:
    return server.cli_json("token", "add", "agent-pc1", "--role", "operator")["secret"]


def test_a_device_whose_server_died_is_served_at_once_by_another(cluster):
    a, b = cluster.servers["a"], cluster.servers["b"]
    cluster.start()
    answer = b.api("POST", "/login", json={"device": "pc1", "reserve": False}).json()
    assert (answer["size"], answer["write_cache_type"], answer["failover"]) == (
        SIZE,
        "device-ram",
        True,
    )
    sha = answer["sha256"]
    assert len(sha) == 64

    info = subprocess.run(
        ["nbdinfo", "--json", f"nbd://127.0.0.1:{b.nbd_port}/pc1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    [export] = json.loads(info.stdout)["exports"]
    assert export["description"] == f"vdfarm vdisk=golden version=0 sha256={sha} size={SIZE}"

    on_a = RawClient(a.nbd_port)
    on_a.connect("pc1")
    first = on_a.call(CMD_READ, 0, 4096)
    assert first[0] == 0
    assert a.cli_json("device", "show", "pc1")["session"]["server"] == "a"

    a.kill()  # A's row stays until its heartbeat times out; the agent does not wait
    answer = b.api("POST", "/login", json={"device": "pc1", "exclude": ["a"]}).json()
    assert answer["server"]["name"] == "b" and answer["sha256"] == sha
    on_b = RawClient(b.nbd_port)
    on_b.connect("pc1")
    assert on_b.call(CMD_READ, 0, 4096) == first
    shown = b.cli_json("device", "show", "pc1")
    assert shown["session"]["server"] == "b" and shown["failovers"] is None
    rows = cluster.server_rows(b)  # A's stale row is gone: it counts nothing
    assert (rows["a"]["connected"], rows["b"]["connected"]) == (0, 1)

    token = operator_token(b)
    report = {"from": "a", "to": "b", "pause_ms": 420, "retried": 3, "reason": "a died"}
    response = b.api(
        "POST",
        "/devices/pc1/failover",
        json=report,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    shown = b.cli_json("device", "show", "pc1")
    assert shown["failovers"]["count"] == 1
    assert {k: shown["failovers"]["last"][k] for k in report} == report
    [event] = [e for e in b.cli_json("audit", "list") if e["action"] == "device.failover"]
    assert event["actor"].startswith("token:agent-pc1")
    text = b.cli("device", "show", "pc1").stdout
    assert "1, last at" in text and "from a to b (pause 420 ms)" in text
    on_b.close()
    on_a.close()
