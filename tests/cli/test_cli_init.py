"""`vdfarm init`, the global options and the uninitialised-data-dir error."""

from __future__ import annotations

import json
import stat

import pytest

from tests.cli.conftest import Cli, assert_one_line_error
from vdfarm.api.auth import read_token

VERBS_NEEDING_A_DATA_DIR = [
    ["vdisk", "list"],
    ["vdisk", "show", "w"],
    ["vdisk", "import", "w", "x.raw"],
    ["vdisk", "set", "w", "--mode", "private"],
    ["vdisk", "delete", "w"],
    ["vdisk", "verify", "w"],
    ["device", "add", "pc1"],
    ["device", "list"],
    ["device", "show", "pc1"],
    ["device", "assign", "pc1", "w"],
    ["device", "set", "pc1", "--type", "test"],
    ["device", "delete", "pc1"],
    ["lock", "list"],
    ["lock", "release", "w"],
    ["audit", "list"],
    ["server", "list"],
    ["server", "run"],
    ["server", "set", "srv1", "--max-booting", "5"],
    ["store", "list"],
    ["device", "login", "pc1"],
    ["vdisk", "set", "w", "--subnet-affinity", "fixed"],
    ["rebalance"],
]


def test_init(cli):
    result = cli.ok("init", "--name", "pvs1")
    assert result.stdout.startswith(f"initialised {cli.data_dir}: server pvs1 (")
    for sub in ("store", "cache", "server.json", "farm.db", "api-token"):
        assert (cli.data_dir / sub).exists()
    again = cli.json("init")
    assert again["server_name"] == "pvs1"
    assert again["server_uuid"] == json.loads((cli.data_dir / "server.json").read_text())["uuid"]
    assert again["store"] == str(cli.data_dir / "store")


def test_init_makes_the_api_token_once(cli):
    out = cli.ok("init").stdout.splitlines()
    token_file = cli.data_dir / "api-token"
    assert out[1] == f"API token (for changes through the REST API and --farm): {token_file}"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = read_token(cli.data_dir)
    assert token and len(token) >= 40
    assert cli.json("init")["api_token_file"] == str(token_file)
    assert read_token(cli.data_dir) == token  # never rewritten


def test_init_refuses_an_unusable_token_file(cli):
    cli.data_dir.mkdir()
    (cli.data_dir / "api-token").write_text("")
    assert_one_line_error(cli("init"), 1, "is empty")
    assert sorted(p.name for p in cli.data_dir.iterdir()) == ["api-token"]


@pytest.mark.parametrize("verb", VERBS_NEEDING_A_DATA_DIR, ids=" ".join)
def test_uninitialised_data_dir(cli, verb):
    result = cli(*verb)
    d = cli.data_dir
    assert_one_line_error(
        result, 1, f"data directory {d} is not initialised; run vdfarm --data-dir {d} init"
    )
    assert result.stderr == (
        f"vdfarm: error: data directory {d} is not initialised; run vdfarm --data-dir {d} init\n"
    )
    assert not d.exists()


def test_data_dir_and_db_from_environment(tmp_path, image):
    runner = Cli(tmp_path / "unused")
    data = tmp_path / "envdata"
    url = f"sqlite:///{tmp_path}/elsewhere.db"
    env = {"VDFARM_DATA_DIR": str(data), "VDFARM_DB": url}
    runner.ok("init", data_dir=False, env=env)
    runner.ok("vdisk", "import", "w", str(image), data_dir=False, env=env)
    assert (tmp_path / "elsewhere.db").exists() and not (data / "farm.db").exists()
    listed = json.loads(runner.ok("--json", "vdisk", "list", data_dir=False, env=env).stdout)
    assert [v["name"] for v in listed] == ["w"]
    assert not (tmp_path / "unused").exists()


def test_db_option_overrides(tmp_path, image):
    cli = Cli(tmp_path / "data")
    url = f"sqlite:///{tmp_path}/other.db"
    cli.ok("--db", url, "init")
    assert not (tmp_path / "data" / "farm.db").exists()
    cli.ok("vdisk", "import", "w", str(image))  # the URL given to init is remembered
    assert [v["name"] for v in cli.json("--db", url, "vdisk", "list")] == ["w"]


def test_bad_db_url(cli):
    assert_one_line_error(cli("--db", "nonsense", "init"), 1, "bad database URL")
    assert not cli.data_dir.exists()


def test_help_and_version(cli):
    assert "vdisk" in cli.ok(data_dir=False).stdout
    assert "import" in cli.ok("vdisk", "--help", data_dir=False).stdout
    assert "0.1.0" in cli.ok("--version", data_dir=False).stdout
