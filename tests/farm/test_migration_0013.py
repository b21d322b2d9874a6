"""Migration 0013 gives existing versions no boot files, lets a version
hold one kernel and one initramfs that go with it, and goes down and up
again keeping every other row."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.farm.test_migration_0012 import AT, fill_0011
from tests.farm.test_migrations import url  # noqa: F401 (fixture)
from vdfarm.farm import db

BOOT = (
    "INSERT INTO version_boot_files (version_id, kind, size, sha256) "
    "VALUES (:version, :kind, 10, :sha)"
)


def test_0013_adds_boot_files_that_go_with_their_version(url):  # noqa: F811
    db.upgrade(url, "0011")
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            fill_0011(conn)
        db.upgrade(url, "0013")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT boot_cmdline FROM vdisk_versions")).all() == [(None,)]
        with engine.begin() as conn:
            version = conn.execute(text("SELECT id FROM vdisk_versions")).scalar()
            conn.execute(text("UPDATE vdisk_versions SET boot_cmdline = 'quiet'"))
            conn.execute(text(BOOT), {"version": version, "kind": "kernel", "sha": "c" * 64})
            conn.execute(
                text(
                    "INSERT INTO store_boot_files (server_id, vdisk_id, kind, sha256, "
                    "verified_at) VALUES (1, 1, 'kernel', :sha, :at)"
                ),
                {"sha": "c" * 64, "at": AT},
            )
        for kind in ("kernel", "bios"):  # one kernel per version; known kinds only
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text(BOOT), {"version": version, "kind": kind, "sha": "d" * 64})
        with engine.begin() as conn:  # the version goes: its boot files go with it
            conn.execute(text("DELETE FROM store_versions"))
            conn.execute(text("DELETE FROM vdisk_versions"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM version_boot_files")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM store_boot_files")).scalar() == 1
        db.downgrade(url, "0012")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM vdisks")).all() == [("w",)]
        db.upgrade(url, "0013")
    finally:
        engine.dispose()
