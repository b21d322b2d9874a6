"""Test helpers shared by service and CLI tests: a hand-moved clock, small raw
images, and a dump of the DB + data dir for "nothing changed" checks."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, text

START = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """Time that only moves when the test says so."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_raw(path, size=1 << 20, fill=b"\x5a"):
    """A sparse raw image of SIZE bytes with 4 KiB of FILL at the start."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.write(fill * 4096)
    return path


def dump_db(engine):
    """Every row of every table, in primary-key order."""
    rows = {}
    with engine.connect() as conn:
        for table in sorted(inspect(conn).get_table_names()):
            result = conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))
            rows[table] = [tuple(r) for r in result]
    return rows


def dump_files(data_dir):
    """(relative path, size) of everything in the data dir but the SQLite files."""
    files = []
    for root, dirs, names in os.walk(data_dir):
        for name in dirs + names:
            if name.startswith("farm.db"):
                continue
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, data_dir), os.path.getsize(path)))
    return sorted(files)


def dump(farm):
    """DB rows and data-dir files of FARM."""
    return dump_db(farm.engine), dump_files(farm.data_dir)


def audit_actions(farm):
    return [e.action for e in farm.audit.list()]
