"""Migration 0010 gives the existing farm_settings row an audit retention of
365 days, keeps the other settings, and goes down and up again."""

from __future__ import annotations

from sqlalchemy import text

from tests.farm.test_migrations import url  # noqa: F401 (fixture)
from vdfarm.farm import db


def test_0010_adds_audit_days_to_the_existing_row(url):  # noqa: F811
    db.upgrade(url, "0009")
    engine = db.make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE farm_settings SET boot_phase_s = 42"))
        db.upgrade(url, "0010")
        select = "SELECT boot_phase_s, audit_days FROM farm_settings"
        with engine.connect() as connection:
            assert [tuple(r) for r in connection.execute(text(select))] == [(42.0, 365)]
        db.downgrade(url, "0009")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT boot_phase_s FROM farm_settings")).scalar() == 42
        db.upgrade(url, "0010")
    finally:
        engine.dispose()
