"""`vdfarm store sets|add|set`, `vdfarm replication status|wait|start`,
`vdisk import|set --store`, `version promote --when-replicated`: output,
JSON, and bad input that prints one line, exits 2 and writes nothing."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from tests.cli.conftest import assert_one_line_error
from vdfarm.service.context import Farm

USAGE = 2


@pytest.fixture
def farm_w(icli, image):
    """vDisk w imported on srv1, which has beaten (up, w in its inventory);
    a heartbeat stays good for 10 minutes, so slow machines see it up."""
    icli.ok("vdisk", "import", "w", str(image))
    with Farm.open(icli.data_dir) as farm:
        farm.settings.change(heartbeat_timeout_s=600)
        farm.servers.register(10809, 8080)
    return icli


@pytest.fixture
def zz(farm_w, tmp_path):
    """A second server, zz, on the same database; up, holding nothing."""
    url = f"sqlite:///{farm_w.data_dir / 'farm.db'}"
    with Farm.init(tmp_path / "zz", url, server_name="zz") as other:
        other.servers.register(10810, 8081)
        yield other


def test_store_sets_add_set(farm_w, image):
    cli = farm_w
    assert cli.json("store", "sets") == [
        {"name": "default", "servers": [], "max_rate_bps": None, "windows": [], "vdisks": ["w"]}
    ]
    table = cli.ok("store", "sets").stdout
    assert table.split()[6:11] == ["default", "all", "none", "always", "w"]
    added = cli.json(
        "store",
        "add",
        "lab",
        "--servers",
        "srv1",
        "--max-rate",
        "50MB/s",
        "--window",
        "22:00-06:00",
        "--window",
        "12:00-13:00",
    )
    assert (added["servers"], added["max_rate_bps"], added["windows"]) == (
        ["srv1"],
        50_000_000,
        ["22:00-06:00", "12:00-13:00"],
    )
    assert cli.ok("store", "set", "lab", "--max-rate", "1.5GB/s").stdout == "updated store lab\n"
    assert "1.5GB/s" in cli.ok("store", "sets").stdout
    changed = cli.json(
        "store", "set", "lab", "--servers", "all", "--max-rate", "none", "--no-window"
    )
    assert (changed["servers"], changed["max_rate_bps"], changed["windows"]) == ([], None, [])
    assert cli.json("vdisk", "import", "x", str(image), "--store", "lab")["store"] == "lab"
    assert cli.json("vdisk", "set", "w", "--store", "lab")["store"] == "lab"
    assert "lab" in cli.ok("vdisk", "show", "w").stdout
    assert cli.json("store", "sets")[1]["vdisks"] == ["w", "x"]
    assert cli.json("store", "list")[0]["server"] == "srv1"  # the holdings, as before


BAD_INPUT = [
    (["store", "add", "x", "--window", "25:00-06:00"], "invalid window '25:00-06:00': hour must"),
    (["store", "add", "x", "--window", "22:00"], "give HH:MM-HH:MM"),
    (["store", "add", "x", "--max-rate", "fast"], "invalid rate 'fast'"),
    (["store", "add", "x", "--max-rate", "50Mb/s"], "invalid rate '50Mb/s'"),
    (["store", "add", "x", "--servers", "ghost"], "no server named ghost"),
    (["store", "add", "x", "--servers", "all,srv1"], "not both"),
    (["store", "add", "bad/name"], "invalid store name"),
    (["store", "set", "nope", "--max-rate", "1M"], "no store named nope"),
    (["store", "set", "default"], "nothing to change"),
    (["store", "set", "default", "--window", "22:00-06:00", "--no-window"], "not both"),
    (["store", "set", "default", "--servers", "ghost"], "no server named ghost"),
    (["replication", "status", "nope"], "no vDisk named nope"),
    (["replication", "wait", "nope"], "no vDisk named nope"),
    (["replication", "wait", "w", "--version", "7"], "vDisk w has no version 7"),
    (["replication", "wait", "w", "--timeout", "-1"], "--timeout"),
    (["replication", "start", "w", "--version", "7", "--now"], "vDisk w has no version 7"),
    (["replication", "start", "nope", "--now"], "no vDisk named nope"),
    (["replication", "start", "w"], "give --now"),
    (["vdisk", "set", "w", "--store", "nope", "--subnet-affinity", "fixed"], "alone"),
    (
        [
            "version",
            "promote",
            "w",
            "--to",
            "production",
            "--when-replicated",
            "--at",
            "2030-01-01",
        ],
        "not both",
    ),
]


@pytest.mark.parametrize(("args", "says"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(farm_w, args, says):
    farm_w.ok("version", "new", "w")  # open: `wait --version 1` is refused too
    before = farm_w.dump()
    assert_one_line_error(farm_w(*args), USAGE, says)
    assert farm_w.dump() == before


def test_a_taken_store_name_is_a_conflict_exit_1(farm_w):
    before = farm_w.dump()
    assert_one_line_error(farm_w("store", "add", "default"), 1, "store default already exists")
    assert farm_w.dump() == before


def test_an_open_version_is_not_replicated(farm_w):
    farm_w.ok("version", "new", "w")
    for args in (["wait", "w", "--version", "1"], ["start", "w", "--version", "1", "--now"]):
        assert_one_line_error(farm_w("replication", *args), USAGE, "open for maintenance")


def test_status_table_and_json(farm_w, zz):
    rows = farm_w.json("replication", "status")
    assert [(r["server"], r["state"], r["pending"]) for r in rows] == [
        ("srv1", "present", True),
        ("zz", "missing", True),
    ]
    table = farm_w.ok("replication", "status", "w").stdout
    assert "0 (pending)" in table and "missing" in table and "present" in table
    with Farm.open(farm_w.data_dir) as farm:
        farm.replication.report(
            zz.server_id,
            farm.vdisks.show("w").id,
            0,
            "base.raw",
            "copying",
            bytes_done=1 << 19,
            bytes_total=1 << 20,
            rate_bps=2e6,
            peer_server_id=farm.server_id,
        )
    table = farm_w.ok("replication", "status").stdout
    assert "copying" in table and "512.0 KiB / 1.0 MiB" in table and "2MB/s" in table


def test_wait_times_out_with_one_line_naming_who_lacks_it(farm_w, zz):
    result = farm_w("replication", "wait", "w", "--timeout", "0.2", "--interval", "0.05")
    assert_one_line_error(result, 1, "version 0 of vDisk w is not on every up server")
    assert "zz missing" in result.stderr


def test_wait_returns_once_the_last_server_holds_it(farm_w, zz):
    def copy_then_beat():
        shutil.copytree(farm_w.data_dir / "store" / "w", zz.store.root / "w")
        zz.servers.heartbeat()

    later = threading.Timer(0.3, copy_then_beat)
    later.start()
    try:
        result = farm_w.ok("replication", "wait", "w", "--interval", "0.05", "--timeout", "60")
    finally:
        later.join()
    assert result.stdout == "version 0 of vDisk w is on every up server of its store (2)\n"
    progress = farm_w.json("replication", "wait", "w", "--version", "0")
    assert progress["replicated"] and progress["bytes_done"] == progress["bytes_total"]


def test_start_now(farm_w):
    assert farm_w.ok("replication", "start", "w", "--now").stdout == (
        "version 0 of vDisk w is copied now, windows or not\n"
    )
    started = farm_w.json("replication", "start", "w", "--version", "0", "--now")
    assert (started["vdisk"], started["version"]) == ("w", 0)
    assert farm_w.json("audit", "list", "--limit", "1")[0]["action"] == "replication.start"


def test_promote_when_replicated(farm_w):
    farm_w.ok("version", "new", "w")
    out = farm_w.ok("version", "promote", "w", "--to", "production", "--when-replicated").stdout
    assert out.splitlines() == [
        "version 1 of vDisk w is now test",
        "it becomes production once every up server of its store holds it "
        "(vdfarm replication wait w --version 1)",
    ]
    [_, v1] = farm_w.json("version", "list", "w")
    assert (v1["access"], v1["when_replicated"]) == ("test", "production")


def test_wait_prints_plain_progress_lines_when_not_on_a_terminal(farm_w, zz):
    def copy_then_beat():
        shutil.copytree(farm_w.data_dir / "store" / "w", zz.store.root / "w")
        zz.servers.heartbeat()

    later = threading.Timer(0.3, copy_then_beat)
    later.start()
    try:
        result = farm_w(
            "replication", "wait", "w", "--interval", "0.05", env={"VDFARM_PROGRESS": "plain"}
        )
    finally:
        later.join()
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "version 0 of vDisk w is on every up server of its store (2)\n"
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("wait w v0 (copies): ") for line in lines), lines
    assert "2.0 MiB of 2.0 MiB (100 %)" in lines[-1] and lines[-1].endswith(", done")
    quiet = farm_w("--json", "replication", "wait", "w", env={"VDFARM_PROGRESS": "plain"})
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["replicated"]
