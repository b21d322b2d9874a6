"""`vdfarm server list` columns and `vdfarm rebalance` through CliRunner, on a
two-server farm sharing the first server's SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.cli.conftest import assert_one_line_error
from tests.service.helpers import FakeClock
from tests.service.multi import add_devices, copy_vdisk, vdisk_id
from vdfarm.farm import db
from vdfarm.service.context import Farm

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def two_servers(icli, image, tmp_path, devices=12):
    """srv1 (the CLI's) and srv2 on one DB, vDisk w on both, DEVICES devices
    connected to srv1 long ago (booted); both servers beat with a clock a day
    ahead, so they stay up for the whole test however slow the machine."""
    icli.ok("vdisk", "import", "w", str(image))
    url = db.sqlite_url(icli.data_dir / "farm.db")
    with (
        Farm.open(icli.data_dir, clock=FakeClock(LONG_AGO)) as one,
        Farm.init(tmp_path / "srv2", url, server_name="srv2") as two,
    ):
        copy_vdisk(one, two)
        for device_id in add_devices(one, devices):
            one.sessions.started(device_id, vdisk_id(one), 0)
    ahead = FakeClock(datetime.now(UTC) + timedelta(days=1))
    with (
        Farm.open(icli.data_dir, clock=ahead) as one,
        Farm.open(tmp_path / "srv2", clock=ahead) as two,
    ):
        one.servers.heartbeat()
        two.servers.heartbeat()


def test_server_list_shows_state_and_load(icli, image, tmp_path):
    two_servers(icli, image, tmp_path)
    servers = {s["name"]: s for s in icli.json("server", "list")}
    assert servers["srv1"]["up"] is True and servers["srv1"]["connected"] == 12
    assert (servers["srv2"]["connected"], servers["srv2"]["booting"]) == (0, 0)
    assert servers["srv2"]["max_booting"] == 500 and servers["srv2"]["power_rating"] == 1.0
    out = icli.ok("server", "list").stdout
    assert "CONNECTED" in out and "BOOTING" in out and " up " in out


def test_rebalance_dry_run_then_apply(icli, image, tmp_path):
    two_servers(icli, image, tmp_path)
    before = icli.dump()
    out = icli.ok("rebalance", "--dry-run").stdout
    assert "would order 5 move(s)" in out and "srv2" in out  # 25 %: 7 and 5 will do
    assert icli.dump() == before
    result = icli.json("rebalance", "--trigger", "10")  # 10 %: 6 and 6
    assert result["applied"] is True and len(result["moves"]) == 6
    assert {m["to_server"] for m in result["moves"]} == {"srv2"}
    assert "ordered 0 move(s)" in icli.ok("rebalance").stdout


def test_rebalance_auto_guard_and_bad_trigger(icli, image, tmp_path):
    two_servers(icli, image, tmp_path, devices=3)
    assert "no rebalance: fewer than 5" in icli.ok("rebalance", "--auto").stdout
    before = icli.dump()
    assert_one_line_error(icli("rebalance", "--trigger", "-5"), 2, "--trigger")
    assert icli.dump() == before
