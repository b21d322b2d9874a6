"""Device sessions over the real server: the write cache belongs to the
device, survives an unclean drop for the grace period, ends on a clean
disconnect; a private vDisk's lock outlives a crashed server only for its
lease."""

from __future__ import annotations

import json
import struct
import subprocess
import time

import pytest

from tests.stream import rawclient as rc
from tests.stream.conftest import store_file
from tests.stream.tcpproxy import TcpProxy

PATTERN = b"\x42" * 4096


def write_then(farm, export: str, disconnect: str) -> None:
    c = rc.RawClient(farm.port)
    c.connect(export)
    assert c.call(rc.CMD_WRITE, 0, 4096, data=PATTERN)[0] == 0
    if disconnect == "clean":
        c.sock.sendall(struct.pack(">IHHQQI", rc.REQUEST_MAGIC, 0, rc.CMD_DISC, 99, 0, 0))
        assert c.is_closed_by_server()
    c.close()


def first_block(farm, export: str) -> bytes:
    c = rc.RawClient(farm.port)
    c.connect(export)
    err, data = c.call(rc.CMD_READ, 0, 4096)
    assert err == 0
    c.close()
    return data


@pytest.fixture
def slow_grace(serve_copy):
    return serve_copy(grace=30)


def test_unclean_drop_keeps_the_write_cache_for_a_reconnect(slow_grace):
    original = first_block(slow_grace, "pc1")
    assert original != PATTERN
    write_then(slow_grace, "pc1", "unclean")
    time.sleep(0.3)
    assert first_block(slow_grace, "pc1") == PATTERN  # continues where it was
    # ...and the reconnect is itself unclean (no DISC): still there
    assert first_block(slow_grace, "pc1") == PATTERN
    # other devices never see it
    assert first_block(slow_grace, "pc2") == original


def test_clean_disconnect_starts_the_next_boot_empty(slow_grace):
    original = first_block(slow_grace, "pc1")
    write_then(slow_grace, "pc1", "clean")
    time.sleep(0.3)
    assert first_block(slow_grace, "pc1") == original


def test_the_grace_period_ends_the_session(served):
    # `served` runs with a 2 s grace period
    original = first_block(served, "pc1")
    write_then(served, "pc1", "unclean")
    time.sleep(4)
    assert first_block(served, "pc1") == original


def test_qemu_reconnect_delay_continues_with_its_write_cache(slow_grace):
    """qemu-io (reconnect-delay=5) writes; the connection is cut under it;
    qemu reconnects and reads its own write back, from the cache the server
    kept for the grace period."""
    proxy = TcpProxy(slow_grace.port)
    opts = (
        f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={proxy.port},"
        f"export=pc1,reconnect-delay=5"
    )
    qemu = subprocess.Popen(
        ["qemu-io", "--image-opts", opts],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        qemu.stdin.write("write -P 0x77 64k 64k\n")
        qemu.stdin.flush()
        time.sleep(1.5)
        proxy.cut()
        time.sleep(0.5)
        qemu.stdin.write("read -P 0x77 64k 64k\nquit\n")
        qemu.stdin.flush()
        out, _ = qemu.communicate(timeout=60)
    finally:
        proxy.close()
        if qemu.poll() is None:
            qemu.kill()
    assert qemu.returncode == 0, out
    assert "wrote 65536/65536" in out and "read 65536/65536" in out, out
    assert "verification failed" not in out.lower(), out
    assert proxy.accepted >= 2, "qemu never reconnected"


def lock_rows(farm) -> list[dict]:
    return json.loads(farm.cli("--json", "lock", "list").stdout)


def test_a_crashed_servers_lock_frees_itself_after_the_lease(serve_copy):
    farm = serve_copy(grace=30, lease=3)
    farm.cli("device", "add", "other", "--vdisk", "mine")
    holder = rc.RawClient(farm.port)
    holder.connect("solo")
    assert holder.call(rc.CMD_WRITE, 0, 4096, data=PATTERN)[0] == 0
    [row] = [r for r in lock_rows(farm) if r["vdisk"] == "mine"]
    assert row["holder"] == "solo" and row["state"] == "held"
    token = row["fencing_token"]

    intruder = rc.RawClient(farm.port)
    intruder.greeting()
    intruder.send_client_flags()
    with pytest.raises(rc.NBDOptionError) as refused:
        intruder.go("other")
    assert "locked" in refused.value.message

    farm.stop(sig_kill=True)  # the server dies holding the lock
    holder.close()
    farm.start(grace=30, lease=3)
    time.sleep(4)  # the lease runs out; nobody releases anything
    [row] = [r for r in lock_rows(farm) if r["vdisk"] == "mine"]
    assert row["state"] in ("expired", "free")
    c = rc.RawClient(farm.port)
    c.connect("other")
    err, data = c.call(rc.CMD_READ, 0, 4096)
    assert err == 0 and data == PATTERN  # the write before the crash is there
    [row] = [r for r in lock_rows(farm) if r["vdisk"] == "mine"]
    assert row["holder"] == "other" and row["fencing_token"] > token
    c.close()
    assert store_file(farm, "mine").exists()
