"""`server run --advertise ADDR`: the address a real server registers is
the one login answers and `server list` show, and devices reach it there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.conftest import make_test_image
from tests.farm.postgres import fresh_postgres_url
from tests.stream.cluster import Cluster
from tests.stream.rawclient import CMD_DISC, CMD_READ
from vdfarm.farm import db


@contextlib.contextmanager
def database(kind: str, tmp_path) -> Iterator[str]:
    if kind == "sqlite":
        yield db.sqlite_url(tmp_path / "farm.db")
    else:
        with fresh_postgres_url() as url:
            yield url


@pytest.fixture
def one_server(db_kind, tmp_path):
    """A farm of one server (not started) with vDisk golden and device pc1."""
    with database(db_kind, tmp_path) as url:
        farm = Cluster(tmp_path, url, ["s1"])
        try:
            farm.init()
            image = make_test_image(tmp_path / "golden.raw", size=4 << 20)
            farm.first.cli("vdisk", "import", "golden", str(image), "--mode", "standard")
            farm.first.cli("device", "add", "pc1", "--vdisk", "golden")
            yield farm
        finally:
            farm.stop()


def advertised(farm: Cluster) -> tuple[str, str]:
    """(host of the login answer for pc1, HOST of `server list --json`)."""
    answer = farm.login("pc1")
    [row] = farm.first.cli_json("server", "list")
    assert answer["server"]["name"] == row["name"] == "s1"
    return answer["server"]["host"], row["hostname"]


def test_login_and_server_list_show_the_advertised_address(one_server):
    server = one_server.first
    server.start("--host", "127.0.0.1", "--advertise", "127.0.0.1")
    assert advertised(one_server) == ("127.0.0.1", "127.0.0.1")
    chosen, client = one_server.connect("pc1")  # at the advertised host
    assert chosen is server
    image = (one_server.root / "golden.raw").read_bytes()
    assert client.call(CMD_READ, 0, 4096) == (0, image[:4096])
    client.request(CMD_DISC, 0, 0)
    client.close()
    server.stop()
    server.start("--advertise", "localhost")  # a name: what the farm shows changes
    assert advertised(one_server) == ("localhost", "localhost")
    _, client = one_server.connect("pc1")
    client.close()
