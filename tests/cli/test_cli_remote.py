"""`vdfarm --farm URL`: the CLI drives a real server process through its REST
API and prints what the local CLI prints; changes are the API's (audited as
token:<name>@<address>); token, connection and local-only verbs fail in one line."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.cli.conftest import Cli, assert_one_line_error
from tests.conftest import free_port
from vdfarm.api.auth import read_token

API_LINE = re.compile(r"REST API on 127\.0\.0\.1:(\d+) ")
START_TIMEOUT_S = 30.0
API_ACTOR_PREFIX = "token:local:"  # the data directory's api-token: token:local:<server>@…


def api_url(farm) -> str:
    """The REST API URL of FARM's running server (from its start line)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = API_LINE.search(farm.server_log())
        if found:
            return f"http://127.0.0.1:{found.group(1)}"
        if farm.server.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no REST API line in the server log:\n{farm.server_log()}")


class Remote:
    """`vdfarm --data-dir D ...` locally, and the same with --farm URL --token T."""

    def __init__(self, farm, url: str) -> None:
        self.cli = Cli(farm.data_dir)
        self.url = url
        self.token = read_token(farm.data_dir)

    def remote_args(self, token: str | None = "") -> list[str]:
        token = self.token if token == "" else token
        return ["--farm", self.url] + (["--token", token] if token else [])

    def remote(self, *args: str, token: str | None = "", env: dict | None = None):
        return self.cli(*self.remote_args(token), *args, env=env)

    def ok(self, *args: str, **kw):
        result = self.remote(*args, **kw)
        assert result.exit_code == 0, (result.exit_code, result.stderr)
        assert result.stderr == ""
        return result

    def json(self, *args: str):
        return json.loads(self.ok("--json", *args).stdout)


@pytest.fixture
def served(farm, test_image):
    """A farm with vDisk w (versions 0 and 1), devices pc1 and pc2, and its
    server running (NBD and the API on free ports)."""
    farm.cli("vdisk", "import", "w", str(test_image))
    farm.cli("version", "new", "w")
    farm.cli("device", "add", "pc1", "--vdisk", "w", "--mac", "52:54:00:00:00:01")
    farm.cli("device", "add", "pc2", "--vdisk", "w", "--type", "test")
    farm.start()
    return Remote(farm, api_url(farm))


READS = [
    ["vdisk", "list"],
    ["vdisk", "show", "w"],
    ["device", "list"],
    ["device", "show", "pc1"],
    ["device", "show", "52:54:00:00:00:01"],
    ["version", "list", "w"],
    ["lock", "list"],
    ["audit", "list"],
    ["store", "list"],
    ["vdisk", "verify", "w"],
]


def test_reads_print_what_the_local_cli_prints(served):
    for verb in READS:
        assert served.ok(*verb).stdout == served.cli.ok(*verb).stdout, verb
        assert served.json(*verb) == served.cli.json(*verb), verb
    remote, local = served.json("server", "list"), served.cli.json("server", "list")
    for listing in (remote, local):
        for info in listing:
            info.pop("last_heartbeat")
    assert remote == local and remote[0]["up"] is True
    assert served.ok("--json", "store", "list", token=None).stdout  # loopback reads: no token
    assert served.json("device", "login", "pc1") == served.cli.json("device", "login", "pc1")


def test_changes_go_through_the_api_and_are_audited(served, tmp_path, test_image):
    before = len(served.cli.json("audit", "list"))
    served.ok("device", "add", "pc3", "--vdisk", "w")
    served.ok("device", "set", "pc3", "--description", "lab")
    served.ok("device", "assign", "pc3", "--none")
    assert served.ok("device", "delete", "pc3").stdout == "deleted device pc3\n"
    assert (
        served.ok("vdisk", "set", "w", "--subnet-affinity", "best-effort").stdout
        == "updated vDisk w: subnet affinity best-effort\n"
    )
    assert served.ok("vdisk", "set", "w", "--description", "golden").stdout == "updated vDisk w\n"
    name = served.cli.json("server", "list")[0]["name"]
    assert served.json("server", "set", name, "--max-booting", "7")["max_booting"] == 7
    assert (
        served.ok("version", "promote", "w", "--to", "test").stdout
        == "version 1 of vDisk w is now test\n"
    )
    served.ok("version", "revert", "w")
    served.ok("version", "override", "w", "0")
    served.ok("version", "override", "w", "--clear")
    served.ok("lock", "release", "w")
    assert "would order 0 move(s)" in served.ok("rebalance", "--dry-run").stdout
    image = served.cli.data_dir / "transfer" / "second.raw"  # the server's transfer dir
    image.write_bytes(test_image.read_bytes()[: 1 << 20])
    served.ok("vdisk", "import", "w2", "second.raw")
    outside = tmp_path / "authorized_keys"
    assert_one_line_error(
        served.remote("vdisk", "export", "w2", str(outside), "--format", "raw"),
        1,
        "is outside the transfer directory",
    )
    assert not outside.exists()
    assert [v["name"] for v in served.cli.json("vdisk", "list")] == ["w", "w2"]
    entries = served.cli.json("audit", "list")[before:]
    assert {e["actor"] for e in entries} == {f"{API_ACTOR_PREFIX}{name}@127.0.0.1"}
    assert [e["action"] for e in entries][:5] == [
        "device.add",
        "device.set",
        "device.assign",
        "device.delete",
        "vdisk.set",
    ]
    assert served.cli.json("server", "list")[0]["max_booting"] == 7


def test_token_and_refusals_fail_in_one_line(served):
    before = served.cli.dump()
    assert_one_line_error(
        served.remote("device", "delete", "pc1", token="wrong"),
        1,
        "refused the API token (wrong API token)",
    )
    assert_one_line_error(
        served.remote("device", "delete", "pc1", token=None),
        1,
        "needs the API token for this; give --token-file PATH (or VDFARM_TOKEN_FILE",
    )
    assert_one_line_error(served.remote("device", "add", "pc1"), 1, "pc1")
    assert_one_line_error(served.remote("vdisk", "show", "nope"), 1, "no vDisk named nope")
    assert_one_line_error(
        served.remote("vdisk", "import", "w3", "relative.raw"),
        1,
        "relative.raw does not exist in the transfer directory",
    )
    assert_one_line_error(served.remote("device", "set", "pc1", "--mac", "nonsense"), 1, "nonsense")
    assert served.cli.dump() == before
    env = {"VDFARM_FARM": served.url, "VDFARM_TOKEN": served.token}
    assert (
        Cli(served.cli.data_dir)("--json", "vdisk", "list", data_dir=False, env=env).exit_code == 0
    )


def test_unreachable_farm(cli):
    port_of_nothing = f"http://127.0.0.1:{free_port()}"  # closed again: nothing listens
    assert_one_line_error(
        cli("--farm", port_of_nothing, "vdisk", "list"), 1, f"cannot reach farm {port_of_nothing}: "
    )
    assert_one_line_error(cli("--farm", "localhost:8080", "vdisk", "list"), 1, "bad farm URL")
    assert not cli.data_dir.exists()


@pytest.mark.parametrize(
    "verb, what",
    [
        (["init"], "init"),
        (["server", "run"], "server run"),
        (["db", "upgrade"], "db upgrade"),
        (["demo"], "demo"),
        (["image", "sample", "x.raw"], "image sample"),
    ],
)
def test_local_only_verbs_refuse_farm(cli, verb, what):
    assert_one_line_error(
        cli("--farm", "http://127.0.0.1:9", *verb),
        2,
        f"{what} works on this host's data directory only; run it without --farm",
    )
    assert not cli.data_dir.exists()


def test_farm_and_db_together_are_refused(cli):
    assert_one_line_error(
        cli("--farm", "http://127.0.0.1:9", "--db", "sqlite:///x.db", "vdisk", "list"),
        2,
        "give --farm (a farm's REST API) or --db",
    )


def test_a_remote_merge_runs_as_a_job_with_the_cli_result(served, test_image):
    for name in ("m1", "m2", "m3"):
        served.cli.ok("vdisk", "import", name, str(test_image))
        for _ in range(2):
            served.cli.ok("version", "new", name)
            served.cli.ok("version", "promote", name, "--to", "production")
    remote = served.json("version", "merge", "m1")
    local = served.cli.json("version", "merge", "m2")
    assert remote == local | {"vdisk": "m1"}
    assert remote["removed"] == [1] and remote["kept"] == 2
    human = served.ok("version", "merge", "m3").stdout
    assert human == "merged version(s) 1 of vDisk m3 into version 2 (now on version 0)\n"
    with httpx.Client(headers={"Authorization": f"Bearer {served.token}"}) as http:
        jobs = http.get(f"{served.url}/api/v1/jobs").json()
    assert [(j["kind"], j["target"], j["state"]) for j in jobs] == [
        ("merge", "m3", "done"),
        ("merge", "m1", "done"),
    ]
    assert jobs[1]["result"] == remote and jobs[1]["actor"].startswith(API_ACTOR_PREFIX)
    again = served.remote("version", "merge", "m1")  # nothing left: the job fails as locally
    assert_one_line_error(again, 1, "nothing to merge in vDisk m1")
    assert again.stderr == served.cli("version", "merge", "m1").stderr
