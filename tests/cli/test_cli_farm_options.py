"""--data-dir and --db after the verb (`common.farm_options`): accepted by
every verb that opens a data directory, winning over the ones before it;
--db still refuses --farm."""

from __future__ import annotations

import shutil

import pytest

import vdfarm.daemon.run
from tests.cli.conftest import Cli, assert_one_line_error
from vdfarm.farm import db


@pytest.fixture
def runs(monkeypatch):
    """The (data dir, database URL) of every `server run` (run_server faked)."""
    calls = []

    def fake_run_server(farm, *_args, **_kwargs):
        calls.append((farm.data_dir, farm.db_url))

    monkeypatch.setattr(vdfarm.daemon.run, "run_server", fake_run_server)
    return calls


def test_server_run_db_after_the_verb_reaches_run_server(icli, tmp_path, runs):
    copy = tmp_path / "copy.db"
    shutil.copy(icli.data_dir / "farm.db", copy)  # the same farm, in another file
    url = db.sqlite_url(copy)
    icli.ok("server", "run", "--db", url)
    icli.ok("--db", "nonsense", "server", "run", "--db", url)  # the one after the verb wins
    icli.ok("server", "run", "--db", url, env={"VDFARM_DB": "nonsense"})
    icli.ok("server", "run")
    own = db.sqlite_url(icli.data_dir / "farm.db")
    assert runs == [(icli.data_dir, url)] * 3 + [(icli.data_dir, own)]


def test_data_dir_after_the_verb_wins(icli, tmp_path, runs):
    elsewhere = Cli(tmp_path / "nowhere")
    elsewhere.ok("server", "run", "--data-dir", str(icli.data_dir))
    elsewhere.ok(
        "server",
        "run",
        "--data-dir",
        str(icli.data_dir),
        data_dir=False,
        env={"VDFARM_DATA_DIR": str(tmp_path / "nowhere")},
    )
    assert runs == [(icli.data_dir, db.sqlite_url(icli.data_dir / "farm.db"))] * 2
    assert not (tmp_path / "nowhere").exists()


def test_init_with_db_and_data_dir_after_the_verb(tmp_path, image):
    cli = Cli(tmp_path / "unused")
    data, url = tmp_path / "data", db.sqlite_url(tmp_path / "farm-elsewhere.db")
    out = cli.json("init", "--name", "s1", "--data-dir", str(data), "--db", url)
    assert out["data_dir"] == str(data) and out["server_name"] == "s1"
    assert (tmp_path / "farm-elsewhere.db").exists() and not (data / "farm.db").exists()
    assert not (tmp_path / "unused").exists()
    cli.ok("vdisk", "import", "w", str(image), "--data-dir", str(data))  # URL remembered
    listed = cli.json("vdisk", "list", "--db", url, "--data-dir", str(data))
    assert [v["name"] for v in listed] == ["w"]


def test_db_after_the_verb_is_used_and_checked(icli):
    assert_one_line_error(icli("vdisk", "list", "--db", "nonsense"), 1, "bad database URL")
    assert_one_line_error(icli("db", "upgrade", "--db", "nonsense"), 1, "bad database URL")


def test_farm_still_refuses_db_after_the_verb(cli):
    assert_one_line_error(
        cli("--farm", "http://127.0.0.1:9", "vdisk", "list", "--db", "sqlite:///x.db"),
        2,
        "give --farm (a farm's REST API) or --db",
    )
    assert_one_line_error(
        cli("--farm", "http://127.0.0.1:9", "server", "run", "--db", "sqlite:///x.db"),
        2,
        "or --db, not both",
    )
    assert not cli.data_dir.exists()


@pytest.mark.parametrize(
    "verb",
    [["server", "run"], ["init"], ["vdisk", "list"], ["db", "upgrade"], ["demo"], ["farm", "set"]],
)
def test_help_shows_them(cli, verb):
    out = cli.ok(*verb, "--help", data_dir=False).stdout
    assert "--db URL" in out and "--data-dir PATH" in out


def test_image_sample_has_no_data_dir(cli):
    out = cli.ok("image", "sample", "--help", data_dir=False).stdout
    assert "--db" not in out and "--data-dir" not in out
