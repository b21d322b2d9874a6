"""Migration 0012 puts every existing vDisk in the store set `default`,
allows `replica` tokens, keeps every row, and goes down and up again
(SQLite: with foreign keys off while it changes `vdisks`, which others
reference with ON DELETE CASCADE, so no child row is lost)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.farm.test_migrations import url  # noqa: F401 (fixture)
from vdfarm.farm import db

AT = "2030-01-01 00:00:00.000000"
TOKEN = (
    "INSERT INTO api_tokens (name, role, secret_sha256, created_at, created_by) "
    "VALUES (:name, :role, :sha, :at, 'test')"
)


def fill_0011(conn):
    conn.execute(
        text(
            "INSERT INTO servers (id, uuid, name, hostname, store_path, version, created_at) "
            "VALUES (1, :uuid, 's1', 'h', '/s', '0.1', :at)"
        ),
        {"uuid": "1" * 36, "at": AT},
    )
    conn.execute(
        text(
            "INSERT INTO vdisks (id, name, size, format, sha256, created_at) "
            "VALUES (1, 'w', 4096, 'raw', :sha, :at)"
        ),
        {"sha": "a" * 64, "at": AT},
    )
    conn.execute(
        text(
            "INSERT INTO vdisk_versions (vdisk_id, number, file_name, format, access, "
            "size, sha256, created_at) VALUES (1, 0, 'base.raw', 'raw', 'production', "
            "4096, :sha, :at)"
        ),
        {"sha": "a" * 64, "at": AT},
    )
    conn.execute(text("INSERT INTO locks (vdisk_id, fencing_token) VALUES (1, 3)"))
    conn.execute(
        text(
            "INSERT INTO store_versions (server_id, vdisk_id, version, verified_at) "
            "VALUES (1, 1, 0, :at)"
        ),
        {"at": AT},
    )
    conn.execute(text(TOKEN), {"name": "t", "role": "read", "sha": "b" * 64, "at": AT})


def children(conn):
    return [
        conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        for table in ("vdisk_versions", "locks", "store_versions", "api_tokens")
    ]


def test_0012_up_and_down_keeps_rows(url):  # noqa: F811
    engine = db.make_engine(url)
    try:
        db.upgrade(url, "0011")
        with engine.begin() as conn:
            fill_0011(conn)
        db.upgrade(url, "0012")
        with engine.connect() as conn:
            assert conn.execute(
                text("SELECT id, name, max_rate_bps, windows FROM store_sets")
            ).all() == [(1, "default", None, "")]
            assert conn.execute(text("SELECT store_set_id FROM vdisks")).scalar() == 1
            assert conn.execute(text("SELECT api_tls FROM servers")).scalar() in (False, 0)
            assert conn.execute(
                text("SELECT replicate_now_at, promote_when_replicated FROM vdisk_versions")
            ).one() == (None, None)
            assert children(conn) == [1, 1, 1, 1]
        with engine.begin() as conn:  # a second store set gets the next id
            conn.execute(text("INSERT INTO store_sets (name) VALUES ('lab')"))
            assert conn.execute(text("SELECT id FROM store_sets WHERE name = 'lab'")).scalar() == 2
            conn.execute(text(TOKEN), {"name": "r", "role": "replica", "sha": "c" * 64, "at": AT})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(TOKEN), {"name": "x", "role": "root", "sha": "d" * 64, "at": AT})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("UPDATE vdisks SET store_set_id = 99"))
        db.downgrade(url, "0011")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM vdisks")).scalar() == "w"
            assert children(conn) == [1, 1, 1, 1]  # the replica token is gone
            assert conn.execute(text("SELECT name FROM api_tokens")).scalar() == "t"
        db.upgrade(url, "0012")
    finally:
        engine.dispose()
