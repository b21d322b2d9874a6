"""Migration 0004 keeps existing rows and gives them the placement defaults;
its downgrade gives the 0003 schema back with the rows — SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from tests.farm.test_migrations import url  # noqa: F401  (the fixture)
from vdfarm.farm import db

AT = datetime(2030, 1, 1, tzinfo=UTC)


def fill_0003(conn):
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
        text("INSERT INTO devices (id, name, vdisk_id, created_at) VALUES (1, 'pc1', 1, :at)"),
        {"at": AT},
    )
    conn.execute(
        text(
            "INSERT INTO device_sessions (device_id, server_id, vdisk_id, version, connected_at, "
            "last_seen, cache_used_bytes) VALUES (1, 1, 1, 0, :at, :at, 7)"
        ),
        {"at": AT},
    )


def test_0004_up_and_down_keeps_rows(url):  # noqa: F811
    engine = db.make_engine(url)
    try:
        db.upgrade(url, "0003")
        with engine.begin() as conn:
            fill_0003(conn)
        db.upgrade(url, "0004")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT subnet, max_booting FROM servers")).one() == (
                None,
                500,
            )
            assert conn.execute(text("SELECT subnet_affinity FROM vdisks")).scalar() == "none"
            assert conn.execute(
                text(
                    "SELECT device_id, cache_used_bytes, client_ip, move_to_server_id, "
                    "move_requested_at FROM device_sessions"
                )
            ).one() == (1, 7, None, None, None)
            assert conn.execute(text("SELECT count(*) FROM store_versions")).scalar() == 0
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO servers (id, uuid, name, hostname, store_path, version, "
                    "created_at) VALUES (2, :uuid, 's2', 'h', '/s', '0.1', :at)"
                ),
                {"uuid": "2" * 36, "at": AT},
            )
            conn.execute(text("UPDATE device_sessions SET move_to_server_id = 2"))
            conn.execute(
                text(
                    "INSERT INTO store_versions (server_id, vdisk_id, version, "
                    "verified_at) VALUES (2, 1, 0, :at)"
                ),
                {"at": AT},
            )
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM servers WHERE id = 2"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM store_versions")).scalar() == 0
            assert conn.execute(
                text("SELECT device_id, move_to_server_id FROM device_sessions")
            ).one() == (1, None)
        db.downgrade(url, "0003")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM vdisks")).scalars().all() == ["w"]
            assert conn.execute(
                text("SELECT device_id, cache_used_bytes FROM device_sessions")
            ).one() == (1, 7)
    finally:
        engine.dispose()
