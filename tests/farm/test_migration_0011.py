"""Migration 0011 gives every existing vDisk `require_tls` false, keeps its
other columns, and goes down and up again."""

from __future__ import annotations

from sqlalchemy import text

from tests.farm.test_migrations import url  # noqa: F401 (fixture)
from vdfarm.farm import db

INSERT = (
    "INSERT INTO vdisks (name, size, format, access_mode, write_cache_type, "
    "description, sha256, created_at, max_versions, subnet_affinity) VALUES "
    "('golden', 1024, 'raw', 'standard', 'server-disk', 'd', :sha, :at, 5, 'none')"
)


def test_0011_adds_require_tls_false_to_existing_vdisks(url):  # noqa: F811
    db.upgrade(url, "0010")
    engine = db.make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(INSERT), {"sha": "0" * 64, "at": "2030-01-01 00:00:00.000000"})
        db.upgrade(url, "0011")
        select = "SELECT name, description, require_tls FROM vdisks"
        with engine.connect() as connection:
            [(name, description, require_tls)] = connection.execute(text(select)).all()
        assert (name, description, bool(require_tls)) == ("golden", "d", False)
        with engine.begin() as connection:
            connection.execute(text("UPDATE vdisks SET require_tls = :on"), {"on": True})
        with engine.connect() as connection:
            assert connection.execute(text("SELECT require_tls FROM vdisks")).scalar() in (True, 1)
        db.downgrade(url, "0010")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT description FROM vdisks")).scalar() == "d"
        db.upgrade(url, "0011")
    finally:
        engine.dispose()
