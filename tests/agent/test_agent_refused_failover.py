"""Where the agent must not fail over, on the shared farm (tests/agent/farm.py),
with real clients (qemu-io, qemu-img) on its socket.

- A private-mode device (vDisk `diary`, on its home — the first server —
  only): the agent says at start that it will not fail over; with the home
  SIGKILLed a write waits (the agent tries the home again, no other
  server); when the home is started again the agent reconnects to it, the
  waiting write completes, and every write flushed before the kill reads
  back intact, the rest of the disk as imported. No failover names another
  server, in the agent's status or in the farm's audit.
- A device (vDisk `mirror`) whose only other server up holds a different
  copy: the agent streams from B and is moved off it by a hang (SIGSTOP:
  B keeps what it knew of the device). While B is stopped its store gets
  another image imported under the same name (same size, its own manifest
  and sha256: a consistent store, but not the copy the farm sealed) and
  the third server is killed; then the agent's server is killed and B
  continues, the only server up. B refuses the device (though it served it
  before), the agent streams from nobody and a read started meanwhile
  waits; once the killed servers are back, that read completes with the
  right bytes, and replication gives B the right copy again (the farm is
  left as it was).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.conftest import make_test_image, sha256
from tests.stream.cluster import ClusterServer
from vdfarm.store.store import Store

MIB = 1 << 20
FLUSHED = (0, MIB, 0x5A)  # offset, length, byte: written and flushed before the kill
WAITED = (MIB + 4096, 64 << 10, 0x6B)  # written while the home is down


def qemu_io(uri: str, *commands: str) -> subprocess.Popen:
    argv = ["qemu-io", "-f", "raw", uri]
    for command in commands:
        argv += ["-c", command]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def compare(image: Path, uri: str) -> subprocess.Popen:
    """`qemu-img compare` of IMAGE with the disk at URI (exit 0: identical)."""
    argv = ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), uri]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, timeout: float = 120) -> str:
    """PROC's output once it ended; fails if it failed."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "failed" not in out + err, out + err
    return out


def wait_for(predicate, what, timeout: float = 60) -> None:
    """Until PREDICATE() holds; fails with WHAT() after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what()
        time.sleep(0.1)


def test_a_private_device_waits_for_its_home_and_keeps_its_writes(agent_farm, tmp_path):
    home = agent_farm.cluster.first
    expected = bytearray(agent_farm.images["diary"].read_bytes())
    with agent_farm.agent("pv1") as agent:
        shown = agent.status()
        assert shown["server"] == home.name and shown["failover_allowed"] is False, shown
        assert f"device pv1 stays on server {home.name}" in agent.log()

        offset, length, byte = FLUSHED
        finished(qemu_io(agent.uri, f"write -P {byte} {offset} {length}", "flush"))
        expected[offset : offset + length] = bytes([byte]) * length

        home.kill()
        offset, length, byte = WAITED
        waiting = qemu_io(agent.uri, f"write -P {byte} {offset} {length}", "flush")
        # The agent tried its home again (refused: it is down), nothing else.
        attempt = f"{home.name} (127.0.0.1:{home.nbd_port}): "
        wait_for(
            lambda: (agent.status_now()["last_error"] or "").startswith(attempt),
            lambda: f"no attempt at {home.name}: {agent.status_now()}\n{agent.log()}",
        )
        assert agent.status_now()["state"] == "waiting for a server"
        assert waiting.poll() is None, waiting.communicate()  # the write waits

        home.launch()
        home.wait_up()
        finished(waiting)
        expected[offset : offset + length] = bytes([byte]) * length

        wanted = tmp_path / "expected.raw"
        wanted.write_bytes(expected)
        finished(compare(wanted, agent.uri))
        shown = agent.status()

    assert shown["server"] == home.name, shown
    assert shown["failovers"], shown  # the kill was seen
    for record in shown["failovers"]:
        assert record["from_server"] == record["to_server"] == home.name, shown
    for row in agent_farm.reported_failovers("pv1", len(shown["failovers"])):
        assert row["after"]["from"] == row["after"]["to"] == home.name, row
    for server in agent_farm.servers.values():  # the build and replication left it home
        assert (server.data_dir / "store" / "diary").exists() == (server is home)
    print(f"home down and up: pauses {[r['pause_ms'] for r in shown['failovers']]} ms")


def plant_other_copy(server: ClusterServer, vdisk: str, image: Path, keep: Path) -> Path:
    """Import IMAGE into SERVER's store as VDISK (its own manifest and
    sha256), the copy the store held moved to KEEP; returns where it went."""
    store = server.data_dir / "store"
    kept = keep / f"{vdisk}-{server.name}"
    (store / vdisk).rename(kept)
    Store(store).import_image(vdisk, image, "raw")
    return kept


def test_a_server_with_another_copy_is_refused_and_reads_wait(agent_farm, tmp_path):
    image = agent_farm.images["mirror"]
    other = make_test_image(tmp_path / "other.raw", image.stat().st_size, seed=6)
    with agent_farm.agent("mm1", extra=("--io-timeout", "1")) as agent:
        finished(compare(image, agent.uri))
        b = agent_farm.serving(agent)
        s, c = [server for server in agent_farm.servers.values() if server is not b]

        c.kill()
        b.pause()
        finished(qemu_io(agent.uri, "read 0 64k"))  # moves the agent off B (I/O timeout)
        [moved] = agent.settled_failovers(1)
        assert (moved["from_server"], moved["to_server"]) == (b.name, s.name), moved
        kept = plant_other_copy(b, "mirror", other, tmp_path)
        s.kill()
        b.resume()  # the only server up, with another copy

        waiting = compare(image, agent.uri)  # its first read meets the outage
        direct = subprocess.run(
            ["nbdinfo", f"nbd://127.0.0.1:{b.nbd_port}/mm1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert direct.returncode != 0, f"{b.name} served its other copy: {direct.stdout}"
        print(f"{b.name} refused: {direct.stderr.strip()}")
        wait_for(
            lambda: agent.status_now()["state"] == "waiting for a server",
            lambda: f"the agent streams on: {agent.status_now()}",
        )
        assert agent.status_now()["server"] is None
        assert waiting.poll() is None, waiting.communicate()  # the read waits

        agent_farm.all_up()
        finished(waiting)  # identical: the right bytes, once a right copy is up
        shown = agent.status()
    outage = shown["failovers"][1:]
    assert [r["from_server"] for r in outage] == [s.name], shown
    print(
        f"outage: {outage[0]['pause_ms']} ms, back on {outage[0]['to_server']}; "
        f"the agent noted: {shown['last_error']}"
    )

    # Replication gives B the right copy again (from the servers back up).
    store = Store(b.data_dir / "store")
    wait_for(
        lambda: (
            store.manifest("mirror").top.sha256 == sha256(image)
            and sha256(store.path_of("mirror")) == sha256(image)
        ),
        lambda: f"{b.name}'s copy of mirror (first: {kept}) was not replaced:\n{b.log()[-3000:]}",
        timeout=120,
    )
    assert not store.verify("mirror").problems
