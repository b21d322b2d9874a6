"""Admin verbs: `server set`, `vdisk set --subnet-affinity`, `db upgrade`,
`store list`, `device login` — through CliRunner on a tmp data dir."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.cli.conftest import Cli, assert_one_line_error
from vdfarm.farm import db
from vdfarm.farm.models import Vdisk
from vdfarm.service.context import Farm


def affinity(cli, name="w"):
    with Farm.open(cli.data_dir) as farm, farm.session() as session:
        return session.scalar(select(Vdisk.subnet_affinity).where(Vdisk.name == name))


def last_audit(cli):
    return cli.json("audit", "list", "--limit", "1")[0]


def test_server_set(icli):
    out = icli.ok(
        "server",
        "set",
        "srv1",
        "--power-rating",
        "2.5",
        "--subnet",
        "10.1.0.0/16",
        "--max-booting",
        "40",
    ).stdout
    assert out == "updated server srv1: power rating 2.5, subnet 10.1.0.0/16, max booting 40\n"
    info = icli.json("server", "set", "srv1", "--no-subnet")
    assert (info["power_rating"], info["subnet"], info["max_booting"]) == (2.5, None, 40)
    [listed] = icli.json("server", "list")
    assert (listed["subnet"], listed["max_booting"]) == (None, 40)
    entry = last_audit(icli)
    assert (entry["action"], entry["actor"].startswith("cli:")) == ("server.set", True)


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["srv1"], 1, "nothing to change"),
        (["srv1", "--power-rating", "0"], 1, "invalid power rating"),
        (["srv1", "--subnet", "10.1.0.0"], 1, "invalid subnet"),
        (["srv1", "--max-booting", "0"], 1, "invalid max-booting"),
        (["srv1", "--subnet", "10.0.0.0/8", "--no-subnet"], 2, "--subnet or --no-subnet"),
        (["srv1", "--max-booting", "many"], 2, "--max-booting"),
        (["nope", "--max-booting", "5"], 1, "no server named nope"),
    ],
)
def test_server_set_refusals_change_nothing(icli, args, code, says):
    before = icli.dump()
    assert_one_line_error(icli("server", "set", *args), code, says)
    assert icli.dump() == before


def test_vdisk_subnet_affinity(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    assert affinity(icli) == "none"
    out = icli.ok("vdisk", "set", "w", "--subnet-affinity", "best-effort").stdout
    assert out == "updated vDisk w: subnet affinity best-effort\n"
    assert affinity(icli) == "best-effort"
    assert icli.json("vdisk", "set", "w", "--subnet-affinity", "fixed")["name"] == "w"
    assert affinity(icli) == "fixed"
    assert last_audit(icli)["after"] == {"subnet_affinity": "fixed"}
    assert icli.json("vdisk", "show", "w")["subnet_affinity"] == "fixed"
    assert "subnet affinity  fixed" in icli.ok("vdisk", "show", "w").stdout


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["w", "--subnet-affinity", "nearby"], 2, "--subnet-affinity"),
        (
            ["w", "--subnet-affinity", "fixed", "--mode", "private"],
            2,
            "give --subnet-affinity alone (not with --mode)",
        ),
        (["nope", "--subnet-affinity", "fixed"], 1, "no vDisk named nope"),
    ],
)
def test_vdisk_subnet_affinity_refusals(icli, image, args, code, says):
    icli.ok("vdisk", "import", "w", str(image))
    before = icli.dump()
    assert_one_line_error(icli("vdisk", "set", *args), code, says)
    assert icli.dump() == before


def test_db_upgrade_of_an_up_to_date_data_dir(icli):
    url = db.sqlite_url(icli.data_dir / "farm.db")
    assert (
        icli.ok("db", "upgrade").stdout
        == f"farm database {url} is at revision {db.HEAD_REVISION} (already up to date)\n"
    )


def test_db_upgrade_brings_an_old_schema_up(icli):
    url = db.sqlite_url(icli.data_dir / "farm.db")
    db.downgrade(url, "0003")
    assert_one_line_error(icli("vdisk", "list"), 1, "is at schema 0003")
    out = icli.ok("db", "upgrade").stdout
    assert out == (f"upgraded farm database {url} from revision 0003 to {db.HEAD_REVISION}\n")
    assert icli.json("vdisk", "list") == []


def test_db_upgrade_of_the_remembered_or_given_url(tmp_path):
    cli = Cli(tmp_path / "data")
    elsewhere = db.sqlite_url(tmp_path / "elsewhere.db")
    cli.ok("--db", elsewhere, "init")
    db.downgrade(elsewhere, "0002")
    assert cli.json("db", "upgrade") == {
        "database": elsewhere,
        "from": "0002",
        "to": db.HEAD_REVISION,
    }
    fresh = db.sqlite_url(tmp_path / "fresh.db")  # no data dir needed with --db
    assert Cli(tmp_path / "none").json("--db", fresh, "db", "upgrade") == {
        "database": fresh,
        "from": None,
        "to": db.HEAD_REVISION,
    }
    assert not (tmp_path / "none").exists()


def test_db_upgrade_refusals(cli, tmp_path):
    assert_one_line_error(cli("db", "upgrade"), 1, "is not initialised")
    assert_one_line_error(cli("db", "upgrade"), 1, "or give --db URL")
    assert_one_line_error(cli("--db", "nonsense", "db", "upgrade"), 1, "bad database URL")
    assert_one_line_error(
        cli("--db", "postgresql+psycopg://root@127.0.0.1:1/x", "db", "upgrade"),
        1,
        "cannot reach the farm database",
    )
    assert not cli.data_dir.exists()


def test_store_list(icli, image, tmp_path):
    assert icli.ok("store", "list").stdout.split() == [
        "SERVER",
        "VDISK",
        "VERSIONS",
        "srv1",
        "-",
        "-",
    ]
    icli.ok("vdisk", "import", "w", str(image))
    icli.ok("version", "new", "w")
    with Farm.open(icli.data_dir) as farm:
        farm.servers.record_inventory()
    assert icli.json("store", "list") == [
        {"server": "srv1", "versions": [{"vdisk": "w", "version": 0}, {"vdisk": "w", "version": 1}]}
    ]
    assert icli.ok("store", "list").stdout.split()[3:] == ["srv1", "w", "0,", "1"]


def test_device_login(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    icli.ok("device", "add", "pc1", "--vdisk", "w", "--mac", "52:54:00:00:00:01")
    with Farm.open(icli.data_dir) as farm:
        farm.servers.register(10809, 8080)
    answer = icli.json("device", "login", "52:54:00:00:00:01", "--client-ip", "10.0.0.5")
    assert (answer["device"], answer["vdisk"], answer["version"]) == ("pc1", "w", 0)
    assert (answer["server"]["name"], answer["server"]["nbd_port"]) == ("srv1", 10809)
    out = icli.ok("device", "login", "pc1").stdout
    assert "w version 0" in out and "srv1 (" in out and ":10809)" in out
    assert_one_line_error(icli("device", "login", "ghost"), 1, "no device named ghost")
    assert_one_line_error(
        icli("device", "login", "pc1", "--client-ip", "x"), 1, "invalid client address"
    )
