"""A running device keeps the version it booted, on the shared farm
(tests/agent/farm.py), with real clients (qemu-img, qemu-io) on the agent's
socket.

The agent of kv1 streams version 0 of `keep`; a new version (its first MiB
rewritten) is made on the first server, promoted to production and
replicated to every server, so a login and every server's export now name
version 1 for kv1. The agent's server is killed: the agent fails over
(its login names version 0), and the disk still reads as the original
image, byte for byte. Then a fresh agent for kv1 (the device rebooted)
gets version 1 and reads the new bytes.
"""

from __future__ import annotations

import subprocess

from tests.agent.test_agent_refused_failover import compare, finished, qemu_io, wait_for
from tests.stream.cluster import ClusterServer

MIB = 1 << 20
NEW_BYTES = (0, MIB, 0x77)  # what version 1 writes over version 0: offset, length, byte


def version_rows(server: ClusterServer, vdisk: str) -> dict[int, dict]:
    return {row["number"]: row for row in server.cli_json("version", "list", vdisk)}


def everywhere(server: ClusterServer, vdisk: str, version: int, names) -> bool:
    rows = server.cli_json("replication", "status", vdisk)
    present = {
        row["server"] for row in rows if row["version"] == version and row["state"] == "present"
    }
    return set(names) <= present


def test_a_running_device_keeps_its_version_after_a_promotion(agent_farm, tmp_path):
    image = agent_farm.images["keep"]
    first = agent_farm.cluster.first
    names = list(agent_farm.servers)
    with agent_farm.agent("kv1", extra=("--io-timeout", "2")) as agent:
        finished(compare(image, agent.uri))
        assert agent.status()["version"] == 0

        first.cli("version", "new", "keep")
        top = first.data_dir / "store" / "keep" / version_rows(first, "keep")[1]["file"]
        offset, length, byte = NEW_BYTES
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P {byte} {offset} {length}", str(top)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        first.cli("version", "promote", "keep", "--to", "production")
        wait_for(
            lambda: everywhere(first, "keep", 1, names),
            lambda: f"version 1 not everywhere: {first.cli_json('replication', 'status', 'keep')}",
            timeout=180,
        )

        serving = agent_farm.serving(agent)
        serving.kill()
        finished(compare(image, agent.uri))  # still version 0's bytes, from another server
        [moved] = agent.settled_failovers(1)
        shown = agent.status()
        assert moved["from_server"] == serving.name and moved["to_server"] != serving.name, moved
        assert shown["server"] == moved["to_server"] and shown["version"] == 0, shown

    agent_farm.all_up()
    expected = bytearray(image.read_bytes())
    expected[offset : offset + length] = bytes([byte]) * length
    rebooted = tmp_path / "version1.raw"
    rebooted.write_bytes(expected)
    with agent_farm.agent("kv1") as agent:  # the device booted again
        assert agent.status()["version"] == 1
        finished(compare(rebooted, agent.uri))
        finished(qemu_io(agent.uri, f"read -P {byte} 0 {length}"))
