"""Migration 0005 makes the one farm_settings row with the defaults, which
the CHECK constraint keeps the only one; down and up again restore it."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.farm.test_migrations import url  # noqa: F401 (fixture)
from vdfarm.farm import db


def test_0005_inserts_the_default_row_and_allows_no_second(url):  # noqa: F811
    db.upgrade(url, "0005")
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT id, heartbeat_timeout_s, boot_phase_s, rebalance_trigger_pct "
                    "FROM farm_settings"
                )
            ).all()
            assert [tuple(r) for r in rows] == [(1, 3.0, 60.0, 25.0)]
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text("INSERT INTO farm_settings (id) VALUES (2)"))
        db.downgrade(url, "0004")
        db.upgrade(url, "0005")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM farm_settings")).scalar() == 1
    finally:
        engine.dispose()
