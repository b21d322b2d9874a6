"""The data directory is private (issue 9, Low): after `init` the data
directory and the store are 0700, server.json (it may hold the database
password) and farm.db (and SQLite's -wal/-shm) 0600, and another user cannot
read them; a data directory made by an older vdfarm (world-readable) is
tightened by `init` and by `db upgrade`."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from vdfarm.service.context import Farm
from vdfarm.service.errors import Invalid

PRIVATE = {
    ".": 0o700,
    "store": 0o700,
    "cache": 0o700,
    "server.json": 0o600,
    "farm.db": 0o600,
}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes(data_dir: Path) -> dict[str, int]:
    found = {name: mode_of(data_dir / name) for name in PRIVATE}
    for side in ("farm.db-wal", "farm.db-shm"):
        if (data_dir / side).exists():
            found[side] = mode_of(data_dir / side)
    return found


def expected(data_dir: Path) -> dict[str, int]:
    wanted = dict(PRIVATE)
    for side in ("farm.db-wal", "farm.db-shm"):
        if (data_dir / side).exists():
            wanted[side] = 0o600
    return wanted


@pytest.fixture
def open_parent():
    """A directory every user may enter (pytest's tmp dirs are 0700, which
    would hide a world-readable file from `nobody` and prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="vdfarm-private-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=True)


def read_as_nobody(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(path)],
        capture_output=True,
    )


def test_init_makes_the_data_dir_private(open_parent):
    data_dir = open_parent / "data"
    with Farm.init(data_dir, actor="test:me") as farm:
        farm.devices.add("pc1")  # the database in use: -wal/-shm exist
        assert (data_dir / "farm.db-wal").exists()
        assert modes(data_dir) == expected(data_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as nobody")
def test_another_user_cannot_read_server_json_or_the_database(open_parent):
    data_dir = open_parent / "data"
    Farm.init(data_dir, "sqlite:///" + str(data_dir / "farm.db"), actor="test:me").close()
    assert "farm.db" in (data_dir / "server.json").read_text()  # it holds the URL
    for name in ("server.json", "farm.db"):
        assert read_as_nobody(data_dir / name).returncode != 0, name
    data_dir.chmod(0o755)  # even with the directory opened, the files stay closed
    for name in ("server.json", "farm.db"):
        result = read_as_nobody(data_dir / name)
        assert result.returncode != 0 and b"Permission denied" in result.stderr, name
    control = open_parent / "control"
    control.write_text("readable")
    control.chmod(0o644)
    assert read_as_nobody(control).stdout == b"readable"  # the check itself works


def loosen(data_dir: Path) -> None:
    """What an older vdfarm left: everything readable by everyone."""
    for name, mode in PRIVATE.items():
        (data_dir / name).chmod(0o755 if mode == 0o700 else 0o644)


def test_init_again_tightens_an_older_data_dir(open_parent):
    data_dir = open_parent / "data"
    Farm.init(data_dir, actor="test:me").close()
    loosen(data_dir)
    Farm.init(data_dir, actor="test:me").close()
    assert modes(data_dir) == expected(data_dir)


def test_db_upgrade_tightens_an_older_data_dir(open_parent):
    data_dir = open_parent / "data"
    Farm.init(data_dir, actor="test:me").close()
    loosen(data_dir)
    result = Cli(data_dir)("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert modes(data_dir) == expected(data_dir)


def test_a_shared_sticky_directory_is_refused(open_parent):
    shared = open_parent / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(Invalid, match="shared directory"):
        Farm.init(shared, actor="test:me")
    assert mode_of(shared) == 0o1777 and os.listdir(shared) == []


def test_a_linked_server_json_is_not_followed(open_parent):
    data_dir = open_parent / "data"
    Farm.init(data_dir, actor="test:me").close()
    elsewhere = open_parent / "elsewhere.json"
    elsewhere.write_text((data_dir / "server.json").read_text())
    elsewhere.chmod(0o644)
    (data_dir / "server.json").unlink()
    (data_dir / "server.json").symlink_to(elsewhere)
    Farm.init(data_dir, actor="test:me").close()
    assert mode_of(elsewhere) == 0o644
