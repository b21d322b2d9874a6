"""Farm.init / Farm.open: layout, identity, idempotence, refusals."""

from __future__ import annotations

import json
import socket

import pytest

from tests.farm.postgres import fresh_postgres_url
from vdfarm.farm import db
from vdfarm.service.context import Farm
from vdfarm.service.errors import Conflict, Invalid, NotInitialised, Unavailable


def test_init_creates_layout_and_identity(tmp_path):
    data = tmp_path / "data"
    with Farm.init(data, server_name="pvs1") as farm:
        names = sorted(p.name for p in data.iterdir() if not p.name.startswith("farm.db-"))
        assert names == ["cache", "farm.db", "server.json", "store"]
        identity = json.loads((data / "server.json").read_text())
        assert identity["name"] == "pvs1" == farm.server_name
        assert identity["uuid"] == farm.server_uuid
        assert "db_url" not in identity
        assert farm.store.root == data / "store"
        assert farm.cache_dir == data / "cache"
        assert farm.db_url == f"sqlite:///{data}/farm.db"
        [server] = farm.servers.list()
        assert (server.id, server.name) == (farm.server_id, "pvs1")
        assert server.store_path == str(data / "store")


def test_init_twice_keeps_identity(tmp_path):
    with Farm.init(tmp_path / "d") as first:
        uuid, server_id = first.server_uuid, first.server_id
    with Farm.init(tmp_path / "d") as second:
        assert (second.server_uuid, second.server_id) == (uuid, server_id)
        assert len(second.servers.list()) == 1
        assert [e.action for e in second.audit.list()] == ["server.init"]


def test_init_under_another_name_is_refused(tmp_path):
    Farm.init(tmp_path / "d", server_name="a").close()
    with pytest.raises(Conflict, match="already initialised as server a"):
        Farm.init(tmp_path / "d", server_name="b")


def test_init_with_bad_name_or_url_creates_nothing(tmp_path):
    with pytest.raises(Invalid, match="invalid server name"):
        Farm.init(tmp_path / "d", server_name="no spaces")
    with pytest.raises(Invalid, match="bad database URL"):
        Farm.init(tmp_path / "d", db_url="nonsense")
    assert not (tmp_path / "d").exists()


def test_init_on_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(Invalid, match="cannot create data directory|not a directory"):
        Farm.init(tmp_path / "f")


def test_open_uninitialised(tmp_path):
    with pytest.raises(NotInitialised) as info:
        Farm.open(str(tmp_path / "d"))
    d = tmp_path / "d"
    expected = f"data directory {d} is not initialised; run vdfarm --data-dir {d} init"
    assert str(info.value) == expected
    assert not d.exists()


def test_open_existing_dir_without_identity_creates_no_db(tmp_path):
    with pytest.raises(NotInitialised):
        Farm.open(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_open_with_db_at_base_revision(tmp_path):
    Farm.init(tmp_path / "d").close()
    db.downgrade(db.sqlite_url(tmp_path / "d" / "farm.db"))
    with pytest.raises(NotInitialised, match="schema none"):
        Farm.open(tmp_path / "d")


def test_open_with_other_database_that_lacks_this_server(tmp_path):
    Farm.init(tmp_path / "d").close()
    other = db.sqlite_url(tmp_path / "other.db")
    db.upgrade(other)
    with pytest.raises(NotInitialised, match="does not know server"):
        Farm.open(tmp_path / "d", other)


def test_open_with_unreachable_database(tmp_path):
    Farm.init(tmp_path / "d").close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://nobody:secret@127.0.0.1:{port}/x"
    with pytest.raises(Unavailable) as info:
        Farm.open(tmp_path / "d", url)
    assert "cannot reach the farm database" in str(info.value)
    assert "secret" not in str(info.value)


def test_damaged_identity(tmp_path):
    Farm.init(tmp_path / "d").close()
    (tmp_path / "d" / "server.json").write_text("{")
    with pytest.raises(Invalid, match="damaged"):
        Farm.open(tmp_path / "d")


def test_session_rolls_back_on_error(farm):
    before = farm.servers.list()
    with pytest.raises(RuntimeError), farm.session() as session:
        from vdfarm.farm.models import Server

        session.get(Server, farm.server_id).name = "renamed"
        session.flush()
        raise RuntimeError("boom")
    assert farm.servers.list() == before


def test_register_server(farm, clock):
    info = farm.servers.register(10809, 8080)
    assert (info.nbd_port, info.api_port, info.last_heartbeat) == (10809, 8080, clock.now)
    assert info.hostname == socket.gethostname()
    clock.advance(5)
    farm.servers.heartbeat()
    assert farm.servers.list()[0].last_heartbeat == clock.now
    with pytest.raises(Invalid):
        farm.servers.register(70000)


def test_postgres_farm_remembers_its_url(tmp_path):
    with fresh_postgres_url() as url:
        Farm.init(tmp_path / "d", url, server_name="pg1").close()
        assert json.loads((tmp_path / "d" / "server.json").read_text())["db_url"] == url
        assert not (tmp_path / "d" / "farm.db").exists()
        with Farm.open(tmp_path / "d") as farm:
            assert farm.db_url == url
            assert [s.name for s in farm.servers.list()] == ["pg1"]
        with Farm.init(tmp_path / "second", url, server_name="pg2") as other:
            assert [s.name for s in other.servers.list()] == ["pg1", "pg2"]
        with pytest.raises(Conflict, match="server named pg1 is already in the farm"):
            Farm.init(tmp_path / "third", url, server_name="pg1")
        assert not (tmp_path / "third" / "server.json").exists()


def test_init_again_with_a_new_url_switches_the_farm_database(tmp_path):
    with Farm.init(tmp_path / "d") as first:
        uuid = first.server_uuid
    url = db.sqlite_url(tmp_path / "moved.db")
    Farm.init(tmp_path / "d", url).close()
    with Farm.open(tmp_path / "d") as farm:
        assert (farm.db_url, farm.server_uuid) == (url, uuid)


def test_init_with_unreachable_database(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match="cannot migrate the farm database"):
        Farm.init(tmp_path / "d", f"postgresql+psycopg://nobody@127.0.0.1:{port}/x")
    assert not (tmp_path / "d" / "server.json").exists()


def test_an_exhausted_connection_pool_is_unavailable_not_a_crash(tmp_path):
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    farm = Farm.init(tmp_path / "d")
    url = farm.engine.url
    farm.engine.dispose()
    farm.engine = create_engine(
        url, poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    farm.database.sessions.configure(bind=farm.engine)
    held = farm.engine.connect()  # the only connection
    try:
        with pytest.raises(Unavailable, match="no free connection"):
            farm.vdisks.list()
    finally:
        held.close()
        farm.close()
