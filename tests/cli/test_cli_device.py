"""`vdfarm device …` through CliRunner."""

from __future__ import annotations

from tests.cli.conftest import assert_one_line_error


def test_add_list_show(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    added = icli.ok("device", "add", "pc1", "--vdisk", "w")
    assert added.stdout == "added device pc1 with vDisk w\n"
    data = icli.json(
        "device",
        "add",
        "pc2",
        "--mac",
        "AA-BB-CC-DD-EE-02",
        "--type",
        "test",
        "--description",
        "bench",
    )
    assert (data["mac"], data["device_type"], data["vdisk"], data["description"]) == (
        "aa:bb:cc:dd:ee:02",
        "test",
        None,
        "bench",
    )
    table = icli.ok("device", "list").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "MAC",
        "TYPE",
        "VDISK",
        "STAGE",
        "SINCE",
        "STUCK",
        "LAST",
        "SEEN",
        "DESCRIPTION",
    ]
    assert table[1].split()[:4] == ["pc1", "-", "production", "w"]
    assert icli.json("device", "show", "aabbccddee02")["name"] == "pc2"
    assert "aa:bb:cc:dd:ee:02" in icli.ok("device", "show", "pc2").stdout


def test_assign(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    icli.ok("device", "add", "pc1")
    assert icli.ok("device", "assign", "pc1", "w").stdout == "device pc1 now boots w\n"
    assert icli.ok("device", "assign", "pc1", "--none").stdout == "device pc1 has no vDisk\n"
    assert icli.json("device", "show", "pc1")["vdisk"] is None


def test_set_and_delete(icli):
    icli.ok("device", "add", "pc1", "--mac", "aabbccddee01")
    data = icli.json("device", "set", "pc1", "--type", "maintenance", "--mac", "aa:bb:cc:dd:ee:0a")
    assert (data["device_type"], data["mac"]) == ("maintenance", "aa:bb:cc:dd:ee:0a")
    assert icli.json("device", "set", "pc1", "--no-mac")["mac"] is None
    assert icli.ok("device", "delete", "pc1").stdout == "deleted device pc1\n"
    assert icli.ok("device", "list").stdout == "no devices\n"


def test_assign_needs_exactly_one_target(icli, image):
    icli.ok("device", "add", "pc1")
    before = icli.dump()
    assert_one_line_error(icli("device", "assign", "pc1"), 2, "give either a VDISK or --none")
    assert_one_line_error(icli("device", "assign", "pc1", "w", "--none"), 2, "either")
    assert icli.dump() == before


def test_device_login_asks_without_reserving(icli, image):
    from sqlalchemy import func, select

    from vdfarm.farm.models import LoginReservation
    from vdfarm.service.context import Farm

    icli.ok("vdisk", "import", "w", str(image))
    icli.ok("device", "add", "pc1", "--vdisk", "w")
    with Farm.open(icli.data_dir) as farm:
        farm.servers.register(10809, 8080)
    assert icli.json("device", "login", "pc1")["server"]["name"] == "srv1"
    with Farm.open(icli.data_dir) as farm, farm.session() as session:
        assert session.scalar(select(func.count()).select_from(LoginReservation)) == 0


def test_list_and_show_say_the_boot_stage_and_flag_a_stuck_device(icli, image):
    """`streaming` then `up` recorded by the farm (a session started, its
    write cache used) show in `device list` and `device show`; a device
    that stays in `streaming` for more than a minute is flagged STUCK."""
    from datetime import timedelta

    from vdfarm.farm.models import utcnow
    from vdfarm.service.context import Farm

    icli.ok("vdisk", "import", "w", str(image))
    icli.ok("device", "add", "pc1", "--vdisk", "w", "--mac", "aa:bb:cc:dd:ee:01")
    icli.ok("device", "add", "pc2", "--vdisk", "w")
    assert icli.json("device", "show", "pc1")["stage"] is None
    assert "boot stage   -" in icli.ok("device", "show", "pc1").stdout
    then = utcnow() - timedelta(minutes=2)
    farm = Farm.open(icli.data_dir, clock=lambda: then)
    try:
        farm.servers.register(10809)
        vdisk_id = farm.vdisks.show("w").id
        farm.sessions.started(farm.devices.show("pc1").id, vdisk_id, 0, "10.0.0.1")
        farm.sessions.started(farm.devices.show("pc2").id, vdisk_id, 0, "10.0.0.2")
        farm.sessions.report_cache_usage({farm.devices.show("pc1").id: 4096})
    finally:
        farm.close()
    rows = {line.split()[0]: line for line in icli.ok("device", "list").stdout.splitlines()}
    assert " up " in rows["pc1"] and "STUCK" not in rows["pc1"]
    assert " streaming " in rows["pc2"] and "STUCK" in rows["pc2"]
    shown = icli.json("device", "show", "pc2")
    assert (shown["stage"], shown["stuck"]) == ("streaming", True)
    assert shown["boot_stages"] == {
        "ipxe": None,
        "kernel": None,
        "streaming": shown["stage_at"],
        "up": None,
    }
    assert shown["last_seen"] == shown["stage_at"]
    human = icli.ok("device", "show", "pc1").stdout
    assert "up since" in human and "  streaming" in human and "  ipxe" in human
    assert "last seen" in human
