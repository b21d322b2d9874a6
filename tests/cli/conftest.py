"""CLI-test fixtures: the `vdfarm` group driven by click's CliRunner on a tmp data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.service.helpers import dump_db, dump_files, make_raw
from vdfarm.cli.root import cli as vdfarm_cli
from vdfarm.farm import db

# Progress lines are stderr's; these tests check that stderr holds nothing
# else (tests/cli/test_progress_tty.py shows the progress itself).
CLEAN_ENV = {"VDFARM_DATA_DIR": None, "VDFARM_DB": None, "VDFARM_PROGRESS": "none"}


class Cli:
    """Runs `vdfarm --data-dir DATA_DIR ARGS…` in-process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runner = CliRunner()

    def __call__(self, *args: str, data_dir: bool = True, env: dict | None = None) -> Result:
        argv = (["--data-dir", str(self.data_dir)] if data_dir else []) + list(args)
        return self.runner.invoke(
            vdfarm_cli, argv, env=CLEAN_ENV | (env or {}), catch_exceptions=False
        )

    def ok(self, *args: str, **kw) -> Result:
        result = self(*args, **kw)
        assert result.exit_code == 0, (result.exit_code, result.stderr)
        assert result.stderr == ""
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.ok("--json", *args).stdout)

    def dump(self):
        """The farm's rows and files, less what a running server's heartbeat
        changes every second (its liveness is not the farm's state)."""
        engine = db.make_engine(db.sqlite_url(self.data_dir / "farm.db"))
        try:
            return dump_db(engine, {"servers": {"last_heartbeat"}}), dump_files(self.data_dir)
        finally:
            engine.dispose()


def assert_one_line_error(result: Result, code: int, text: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vdfarm: error: "), lines[0]
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.fixture
def cli(tmp_path):
    return Cli(tmp_path / "data")


@pytest.fixture
def icli(cli):
    """An initialised data dir."""
    cli.ok("init", "--name", "srv1")
    return cli


@pytest.fixture
def image(tmp_path):
    return make_raw(tmp_path / "disk.raw")
