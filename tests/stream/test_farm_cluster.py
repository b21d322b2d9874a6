"""Three real servers on one real PostgreSQL: 30 devices log in and stream,
a server is killed and comes back, a rebalance evens the load, private-mode
locks survive a dead server without anyone acting.

Devices are raw NBD clients (tests/stream/rawclient.py) that log in through
the REST API (POST /login) and then open their export on the server the
answer names, as the device agent will.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from tests.conftest import make_test_image
from tests.farm.postgres import fresh_postgres_url
from tests.stream.cluster import Cluster, wait_until
from tests.stream.rawclient import (
    CMD_DISC,
    CMD_READ,
    CMD_WRITE,
    EPERM,
    NBDOptionError,
    RawClient,
)
from vdfarm.farm.models import DeviceSession, Server
from vdfarm.service.context import Farm

DEVICES = [f"pc{n:02}" for n in range(30)]
TRIGGER_PCT = 25


@pytest.fixture(scope="session")
def db_kind() -> str:
    """These tests run on PostgreSQL only (the farm of several servers is
    what PostgreSQL is for): overrides the stream tests' two-database dimension."""
    return "postgresql"


@pytest.fixture
def cluster(tmp_path):
    with fresh_postgres_url() as url:
        farm = Cluster(tmp_path, url, ["s1", "s2", "s3"])
        try:
            farm.init()
            image = make_test_image(tmp_path / "golden.raw", size=16 << 20)
            farm.first.cli("vdisk", "import", "golden", str(image), "--mode", "standard")
            farm.first.cli("vdisk", "import", "mine", str(image), "--mode", "private")
            farm.first.cli("device", "add", "solo", "--vdisk", "mine")
            farm.copy_store("golden")
            farm.copy_store("mine")
            yield farm
        finally:
            farm.stop()


def add_devices(cluster: Cluster) -> None:
    """The 30 devices, through the API (one process, not 30 CLI runs)."""
    token = (cluster.first.data_dir / "api-token").read_text().strip()
    for name in DEVICES:
        response = cluster.first.api(
            "POST",
            "/devices",
            json={"name": name, "vdisk": "golden"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text


def within_trigger(counts: dict[str, int]) -> bool:
    average = sum(counts.values()) / len(counts)
    return all(abs(n - average) <= max(1, average * TRIGGER_PCT / 100) for n in counts.values())


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_logins_spread_a_dead_server_is_avoided_and_rebalance_evens_the_load(cluster):
    cluster.start()
    add_devices(cluster)
    s1, s2, s3 = cluster.servers.values()
    clients = {}
    for n, device in enumerate(DEVICES):  # log in through every server's API in turn
        server, client = cluster.connect(device, via=[s1, s2, s3][n % 3])
        clients[device] = (server, client)
    counts = cluster.connected_counts()
    assert sum(counts.values()) == 30 and within_trigger(counts), counts
    for via in (s2, s3):  # every server's API tells the same
        assert {k: v["connected"] for k, v in cluster.server_rows(via).items()} == counts

    # SIGKILL s3: it is down once its heartbeat is older than the timeout.
    cluster.servers["s3"].kill()
    rows = wait_until(
        lambda: (r := cluster.server_rows(s1)) and not r["s3"]["up"] and r, "s3 marked down"
    )
    assert rows["s1"]["up"] and rows["s2"]["up"]
    beat = parse_time(rows["s3"]["last_heartbeat"])
    assert parse_time(rows["s1"]["last_heartbeat"]) > beat  # s1 kept beating; s3 went quiet

    # Its devices lost their connection; their next logins land on survivors.
    orphans = [d for d, (server, _) in clients.items() if server.name == "s3"]
    assert len(orphans) == counts["s3"]
    for device in orphans:
        assert clients[device][1].is_closed_by_server(timeout=5)
        answer = cluster.login(device)
        assert answer["server"]["name"] in ("s1", "s2")
        assert "s3" not in [alt["name"] for alt in answer["alternatives"]]
        clients[device] = cluster.connect(device)
    counts = cluster.connected_counts()
    assert counts["s1"] + counts["s2"] == 30, counts

    # s3 returns; `vdfarm rebalance` orders moves, the servers carry them out,
    # the moved devices log in again and land on s3.
    s3.start()
    wait_until(lambda: cluster.server_rows(s1)["s3"]["up"], "s3 up again")
    plan = s1.cli_json("rebalance")
    assert plan["moves"], plan
    assert {m["to_server"] for m in plan["moves"]} == {"s3"}
    moved = {m["device_name"] for m in plan["moves"]}
    for device in moved:
        server, client = clients[device]
        assert client.is_closed_by_server(timeout=15), f"{device} was not asked to move"
        new_server, new_client = cluster.connect(device)
        assert new_server.name == "s3"
        clients[device] = (new_server, new_client)
    counts = wait_until(
        lambda: (c := cluster.connected_counts()) and c["s3"] == len(moved) and c,
        "moved devices recorded on s3",
    )
    assert sum(counts.values()) == 30 and within_trigger(counts), counts
    for device, (_server, client) in clients.items():  # everyone still streams
        assert client.call(CMD_READ, 0, 4096)[0] == 0, device
    audit = s2.cli_json("audit", "list")
    assert sum(1 for row in audit if row["action"] == "device.move") == len(moved)


def lock_row(server, vdisk="mine"):
    [row] = [r for r in server.cli_json("lock", "list") if r["vdisk"] == vdisk]
    return row


def test_a_dead_servers_lock_frees_itself_and_a_stale_holder_is_fenced(cluster):
    cluster.start("--lease", "3")
    s1, s2, s3 = cluster.servers.values()
    first = RawClient(s1.nbd_port)
    first.connect("solo")
    assert first.call(CMD_WRITE, 0, 512, data=b"1" * 512)[0] == 0
    held = lock_row(s2)
    assert (held["state"], held["holder"], held["server"], held["home"]) == (
        "held",
        "solo",
        "s1",
        "s1",
    )

    # The serving server dies; nobody releases anything.
    s1.kill()
    with pytest.raises(NBDOptionError, match="locked by device solo on server s1"):
        RawClient(s2.nbd_port).connect("solo")
    wait_until(lambda: lock_row(s3)["state"] != "held", "the lease ran out", timeout=30)
    # The lock is free, but s1's copy holds solo's writes: no other server
    # serves it from a stale copy on its own, and login says why.
    with pytest.raises(NBDOptionError, match="written on server s1"):  # (up or down yet)
        RawClient(s2.nbd_port).connect("solo")
    refused = s2.api("POST", "/login", json={"device": "solo"})
    assert refused.status_code == 503 and "written on server s1" in refused.json()["detail"]
    # The admin accepts s2's copy (s1 is gone for good): s2 serves it.
    s3.cli("lock", "home", "mine", "s2")
    assert cluster.login("solo")["server"]["name"] == "s2"
    second = RawClient(s2.nbd_port)
    second.connect("solo")
    assert second.call(CMD_WRITE, 0, 512, data=b"2" * 512)[0] == 0
    now = lock_row(s3)
    assert (now["state"], now["server"], now["home"]) == ("held", "s2", "s2")
    assert now["fencing_token"] > held["fencing_token"]
    second.request(CMD_DISC, 0, 0)  # a clean goodbye: the session ends, the lock is freed
    second.close()

    # A stale holder: s2 pauses (as if hung) while serving solo; its lease
    # runs out, the admin moves solo's home to s3, which serves it; when s2
    # wakes up, its old token is refused and so is every write it is asked
    # to make from then on.
    wait_until(lambda: lock_row(s3)["state"] != "held", "s2's clean goodbye freed the lock")
    stale = RawClient(s2.nbd_port)
    stale.connect("solo")
    old_token = lock_row(s3)["fencing_token"]
    s2.pause()
    try:
        wait_until(
            lambda: lock_row(s3)["state"] != "held", "the paused holder's lease ran out", timeout=30
        )
        s3.cli("lock", "home", "mine", "s3")
        third = RawClient(s3.nbd_port)
        third.connect("solo")
        assert lock_row(s3)["fencing_token"] > old_token
    finally:
        s2.resume()
    wait_until(lambda: "lost the lock" in s2.log(), "s2 noticed it lost the lock", timeout=30)
    error, _ = stale.call(CMD_WRITE, 0, 512, data=b"X" * 512)
    assert error == EPERM
    assert third.call(CMD_WRITE, 0, 512, data=b"3" * 512)[0] == 0
    assert lock_row(s3)["server"] == "s3"
    audit = [row["action"] for row in s3.cli_json("audit", "list")]
    assert audit.count("lock.home") == 2


def test_a_device_with_data_in_its_write_cache_is_never_moved(cluster):
    s1, s2, s3 = cluster.servers.values()
    s1.start()
    s2.start()
    add_devices(cluster)
    clients = {}
    for device in DEVICES[:4]:  # all on s1, none on s2
        clients[device] = RawClient(s1.nbd_port)
        clients[device].connect(device)
    assert clients["pc00"].call(CMD_WRITE, 0, 512, data=b"w" * 512)[0] == 0
    wait_until(
        lambda: (
            (s1.cli_json("device", "show", "pc00")["session"]["write_cache_used_bytes"] or 0) > 0
        ),
        "pc00's cache use reported",
    )

    plan = s1.cli_json("rebalance")
    moved = {m["device_name"] for m in plan["moves"]}
    assert len(moved) == 2 and "pc00" not in moved, plan
    for device in moved:
        assert clients[device].is_closed_by_server(timeout=15)

    # The server checks again before it carries an order out: a device that
    # wrote since the plan was made stays, and its order is cancelled.
    [stays] = sorted(set(DEVICES[1:4]) - moved)
    assert clients[stays].call(CMD_WRITE, 0, 512, data=b"x" * 512)[0] == 0
    with Farm.open(s1.data_dir, s1.db_url) as farm, farm.session() as session:
        device_id = farm.exports.resolve(stays).device_id
        s2_id = session.scalar(select(Server.id).where(Server.name == "s2"))
        session.execute(
            update(DeviceSession)
            .where(DeviceSession.device_id == device_id)
            .values(move_to_server_id=s2_id, move_requested_at=farm.now())
        )
    wait_until(lambda: f"device {stays} stays on this server" in s1.log(), "order refused")
    assert "its write cache on this server holds 4096 bytes" in s1.log()  # one 4 KiB block
    assert not clients[stays].is_closed_by_server(timeout=2)
    assert clients[stays].call(CMD_READ, 0, 512) == (0, b"x" * 512)
    with Farm.open(s1.data_dir, s1.db_url) as farm, farm.session() as session:
        assert (
            session.scalar(
                select(DeviceSession.move_to_server_id).where(DeviceSession.device_id == device_id)
            )
            is None
        )


def test_automatic_rebalance_runs_by_itself_on_one_server(cluster):
    s1, s2, s3 = cluster.servers.values()
    s1.start("--auto-rebalance", "1")
    add_devices(cluster)
    clients = {}
    for device in DEVICES[:12]:  # all on s1: 12 devices, 6 per server on average
        clients[device] = RawClient(s1.nbd_port)
        clients[device].connect(device)
    with Farm.open(s1.data_dir, s1.db_url) as farm, farm.session() as session:
        # They booted long ago (the auto mode never moves booting devices).
        session.execute(
            update(DeviceSession).values(connected_at=farm.now() - timedelta(minutes=10))
        )
    s2.start("--auto-rebalance", "1")
    moves = wait_until(
        lambda: [row for row in s2.cli_json("audit", "list") if row["action"] == "device.move"],
        "the automatic rebalance ordered moves",
        timeout=30,
    )
    assert {row["actor"] for row in moves} == {"server:s1"}  # one runner: the lowest-id server
    assert all(row["after"] == {"server": "s2"} for row in moves)
    moved = {row["target_name"] for row in moves}
    counts_before = {"s1": 12 - len(moved), "s2": len(moved)}
    assert within_trigger(counts_before), counts_before
    for device in moved:  # the moved devices are asked to leave...
        assert clients[device].is_closed_by_server(timeout=10), device
    for device in set(clients) - moved:  # ... in the same pass; the others stay
        assert not clients[device].is_closed_by_server(timeout=0.5), device
    for device in moved:
        assert cluster.connect(device)[0].name == "s2"
