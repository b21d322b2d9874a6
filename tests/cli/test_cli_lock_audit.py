"""`vdfarm lock …`, `vdfarm audit list` and `vdfarm server list` through CliRunner."""

from __future__ import annotations

from tests.cli.conftest import assert_one_line_error
from vdfarm.service.context import Farm


def held_lock(icli, image):
    icli.ok("vdisk", "import", "w", str(image), "--mode", "private")
    icli.ok("device", "add", "pc1", "--vdisk", "w")
    with Farm.open(icli.data_dir) as farm:
        target = farm.exports.resolve("pc1")
        return farm.locks.acquire(target.vdisk_id, target.device_id, 3600)


def test_lock_list_states(icli, image):
    grant = held_lock(icli, image)
    icli.ok("vdisk", "import", "free-one", str(image))
    [held, free] = sorted(icli.json("lock", "list"), key=lambda x: x["vdisk"] != "w")
    assert (held["vdisk"], held["holder"], held["server"], held["home"]) == (
        "w",
        "pc1",
        "srv1",
        "srv1",
    )
    assert (held["state"], held["fencing_token"]) == ("held", grant.token)
    assert (free["vdisk"], free["holder"], free["state"]) == ("free-one", None, "free")
    table = icli.ok("lock", "list").stdout.splitlines()
    assert table[0].split() == [
        "VDISK",
        "HOLDER",
        "SERVER",
        "HOME",
        "LEASE",
        "EXPIRES",
        "TOKEN",
        "STATE",
    ]
    assert table[1].split()[:4] == ["free-one", "-", "-", "-"]
    assert table[2].split()[:4] == ["w", "pc1", "srv1", "srv1"]
    assert table[2].split()[-1] == "held"


def test_lock_home_moves_the_current_copy(icli, image):
    held_lock(icli, image)
    refused = icli("lock", "home", "w", "srv1")  # held by srv1 itself: allowed
    assert refused.exit_code == 0 and refused.stdout == "vDisk w now lives on server srv1\n"
    assert icli.json("audit", "list")[-1]["action"] == "lock.home"
    before = icli.dump()
    assert_one_line_error(icli("lock", "home", "w", "nobody"), 1, "no server named nobody")
    assert_one_line_error(icli("lock", "home", "nope", "srv1"), 1, "no vDisk named nope")
    assert icli.dump() == before


def test_lock_release_is_audited_and_fences(icli, image):
    grant = held_lock(icli, image)
    out = icli.ok("lock", "release", "w").stdout
    assert out == "released the lock of vDisk w (was held by device pc1)\n"
    with Farm.open(icli.data_dir) as farm:
        assert not farm.locks.is_current(farm.vdisks.show("w").id, grant.token)
    entry = icli.json("audit", "list")[-1]
    assert entry["action"] == "lock.release" and entry["actor"].startswith("cli:")
    assert icli.ok("lock", "release", "w").stdout == "vDisk w was not locked\n"


def test_lock_release_unknown(icli):
    before = icli.dump()
    assert_one_line_error(icli("lock", "release", "nope"), 1, "no vDisk named nope")
    assert icli.dump() == before


def test_audit_list(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    icli.ok("vdisk", "set", "w", "--description", "hello")
    entries = icli.json("audit", "list")
    assert [e["action"] for e in entries] == ["server.init", "vdisk.import", "vdisk.set"]
    assert all(e["actor"].startswith("cli:") for e in entries)
    table = icli.ok("audit", "list").stdout
    assert "description:  → hello" in table
    assert [e["action"] for e in icli.json("audit", "list", "--limit", "1")] == ["vdisk.set"]
    assert icli.json("audit", "list", "--since", "2999-01-01") == []
    assert len(icli.json("audit", "list", "--since", "2000-01-01T00:00:00Z")) == 3


def test_server_list(icli):
    [server] = icli.json("server", "list")
    assert server["name"] == "srv1" and server["store_path"] == str(icli.data_dir / "store")
    assert "srv1" in icli.ok("server", "list").stdout


def test_audit_list_is_limited_by_default(icli):
    from vdfarm.service.context import Farm

    with Farm.open(icli.data_dir) as farm:
        for i in range(105):
            farm.devices.add(f"pc{i}")
    entries = icli.json("audit", "list")
    assert len(entries) == 100 and entries[-1]["target_name"] == "pc104"
    assert len(icli.json("audit", "list", "--all")) == 106  # + server.init
    assert len(icli.json("audit", "list", "--limit", "3")) == 3
    result = icli("audit", "list", "--all", "--limit", "3")
    assert result.exit_code == 2 and "give --limit or --all, not both" in result.stderr
