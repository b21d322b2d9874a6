"""The farm database goes away under a running VM and comes back.

A real PostgreSQL of the test's own (tests/farm/private_postgres.py) is
stopped while a VM (qemu, TCG) boots from the farm: the VM keeps reading and
writing, a known device boots again from what the server cached, a
private-mode device keeps writing under its lock, management answers 503
(API) and one error line (CLI); after PostgreSQL starts again the server's
heartbeat, session records and lock converge without anyone acting.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_test_image
from tests.farm.private_postgres import PrivatePostgres
from tests.stream.cluster import ClusterServer, wait_until
from tests.stream.rawclient import CMD_FLUSH, CMD_READ, CMD_WRITE, RawClient
from tests.stream.test_boot import cache_file, read_pattern_block
from vdfarm.image import sample, vm

pytestmark = pytest.mark.vm


@pytest.fixture(scope="session")
def db_kind() -> str:
    """Its own PostgreSQL: overrides the stream tests' two-database dimension."""
    return "postgresql"


@pytest.fixture
def postgres():
    server = PrivatePostgres()
    yield server
    server.close()


@pytest.fixture
def offline_farm(tmp_path, postgres):
    image = sample.build(tmp_path / "sample.raw", size_mib=64)
    server = ClusterServer(tmp_path, "s1", postgres.url)
    server.cli("init", "--name", "s1")
    server.cli("vdisk", "import", "golden", str(image), "--mode", "standard")
    server.cli("device", "add", "vm1", "--vdisk", "golden")
    server.cli(
        "vdisk",
        "import",
        "mine",
        str(make_test_image(tmp_path / "m.raw", 8 << 20)),
        "--mode",
        "private",
    )
    server.cli("device", "add", "solo", "--vdisk", "mine")
    server.start("--grace", "5", "--lease", "3")
    yield server
    server.stop()


def live_session(server, device):
    return server.cli_json("device", "show", device)["session"]


def test_streaming_survives_the_database_and_state_converges(offline_farm, postgres):
    server = offline_farm
    solo = RawClient(server.nbd_port)
    solo.connect("solo")
    assert solo.call(CMD_WRITE, 0, 512, data=b"A" * 512)[0] == 0
    size = (server.data_dir / "store" / "golden" / "base.raw").stat().st_size

    # A VM boots; once it streams, the database goes away.
    first = vm.start(
        f"nbd://127.0.0.1:{server.nbd_port}/vm1", "boot1", extra_args=("-no-shutdown",)
    )
    try:
        wait_until(lambda: "device vm1 streaming" in server.log(), "vm1 connected")
        cache = cache_file(server, "vm1")
        postgres.stop()
        assert first.wait_for("VDFARM-DONE", timeout=240), first.serial_text()
        fields = vm.parse_serial(first.serial_text())
        assert fields.booted and fields.readback == "ok", first.serial_text()
        assert read_pattern_block(cache, size) == sample.expected_pattern("boot1")

        # Management says why it cannot answer; nothing hangs.
        response = server.api("GET", "/vdisks")
        assert response.status_code == 503
        assert "database" in response.json()["detail"]
        failed = server.cli("vdisk", "list", check=False)
        assert failed.returncode == 1
        assert failed.stderr.startswith("vdfarm: error:") and "database" in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1

        # The private-mode device goes on writing under its lock.
        assert solo.call(CMD_WRITE, 4096, 512, data=b"B" * 512)[0] == 0
        assert solo.call(CMD_FLUSH, 0, 0)[0] == 0
        assert solo.call(CMD_READ, 0, 512) == (0, b"A" * 512)
    finally:
        first.close()

    # A device the server knows boots again, from what the server cached.
    second = vm.boot(f"nbd://127.0.0.1:{server.nbd_port}/vm1", "boot2", timeout=240)
    assert second.ok, second.serial_output
    assert "vm1 served from cache" in server.log()

    # The database returns: heartbeat, records and lock converge by themselves.
    postgres.start()
    rows = wait_until(lambda: _up_rows(server), "s1 up again", timeout=60)
    assert rows["s1"]["connected"] == 1
    wait_until(lambda: live_session(server, "vm1") is None, "vm1's session record ended")
    assert live_session(server, "solo")["server"] == "s1"
    [lock] = [r for r in server.cli_json("lock", "list") if r["vdisk"] == "mine"]
    wait_until(lambda: _lock_state(server) == "held", "solo's lease renewed", timeout=30)
    assert (lock["holder"], lock["server"]) == ("solo", "s1")
    assert solo.call(CMD_WRITE, 8192, 512, data=b"C" * 512)[0] == 0


def _up_rows(server):
    response = server.api("GET", "/servers")
    if response.status_code != 200:
        return None
    rows = {row["name"]: row for row in response.json()}
    return rows if rows["s1"]["up"] else None


def _lock_state(server) -> str:
    out = server.cli("--json", "lock", "list", check=False)
    if out.returncode != 0:
        return "unknown"
    [lock] = [r for r in json.loads(out.stdout) if r["vdisk"] == "mine"]
    return lock["state"]
