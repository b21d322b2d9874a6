"""Migration 0015 leaves auto-add off and every existing device not
auto-added, keeps one boot record per device (gone with its device, known
stages only), turns auto-add off when its vDisk is deleted, and goes down
and up again keeping every other row."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.farm.test_migration_0012 import AT, fill_0011
from tests.farm.test_migrations import url  # noqa: F401 (fixture)
from vdfarm.farm import db

BOOT = "INSERT INTO device_boots (device_id, stage, stage_at) VALUES (1, :stage, :at)"


def test_0015_adds_boot_stages_and_auto_add(url):  # noqa: F811
    db.upgrade(url, "0014")
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            fill_0011(conn)
            conn.execute(
                text(
                    "INSERT INTO devices (id, name, mac, vdisk_id, created_at) "
                    "VALUES (1, 'pc1', 'aa:bb:cc:00:00:01', 1, :at)"
                ),
                {"at": AT},
            )
        db.upgrade(url, "0015")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT auto_added FROM devices")).all() == [(False,)]
            assert conn.execute(
                text("SELECT auto_add_vdisk_id, auto_add_limit FROM farm_settings")
            ).all() == [(None, 100)]
        with engine.begin() as conn:
            conn.execute(text(BOOT), {"stage": "ipxe", "at": AT})
            conn.execute(text("UPDATE farm_settings SET auto_add_vdisk_id = 1"))
        for stage in ("ipxe", "bios"):  # one boot per device; known stages only
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text(BOOT), {"stage": stage, "at": AT})
        with engine.begin() as conn:  # the device goes: its boot goes with it
            conn.execute(text("DELETE FROM devices"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM device_boots")).scalar() == 0
        with engine.begin() as conn:  # the vDisk goes: auto-add is off
            for table in ("store_versions", "vdisk_versions", "locks"):
                conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text("DELETE FROM vdisks"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT auto_add_vdisk_id FROM farm_settings")).all() == [
                (None,)
            ]
        db.downgrade(url, "0014")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM servers")).all() == [("s1",)]
            assert conn.execute(text("SELECT count(*) FROM farm_settings")).scalar() == 1
        db.upgrade(url, "0015")
    finally:
        engine.dispose()
