"""`vdfarm server run` as one process: NBD, the REST API beside it, and the
heartbeat that marks it alive in the farm database."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import httpx

from tests.stream.conftest import run


def api_port(farm) -> int:
    for _ in range(100):
        found = re.search(r"REST API on [\d.]+:(\d+)", farm.server_log())
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError("the server never said where its API listens:\n" + farm.server_log())


def last_heartbeat(farm) -> datetime:
    [row] = json.loads(farm.cli("--json", "server", "list").stdout)
    return datetime.fromisoformat(row["last_heartbeat"])


def test_one_process_serves_nbd_and_the_api_and_heartbeats(served):
    port = api_port(served)
    servers = httpx.get(f"http://127.0.0.1:{port}/api/v1/servers", timeout=10).json()
    [me] = servers
    assert me["nbd_port"] == served.port and me["api_port"] == port
    devices = httpx.get(f"http://127.0.0.1:{port}/api/v1/devices", timeout=10).json()
    assert {"pc1", "pc2", "solo"} <= {d["name"] for d in devices}
    # changes need the token even from loopback
    refused = httpx.post(f"http://127.0.0.1:{port}/api/v1/devices", json={"name": "x"}, timeout=10)
    assert refused.status_code == 401
    # NBD keeps working beside it
    run("nbdinfo", served.uri("pc1"))
    # heartbeats move last_heartbeat forward by themselves
    first = last_heartbeat(served)
    time.sleep(2.5)
    assert last_heartbeat(served) > first
