"""Test helpers shared by service, store and CLI tests: a hand-moved clock,
small raw images, a dump of the DB + data dir for "nothing changed" checks,
and qemu-img/qemu-io checks of version files."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, text

from vdfarm.daemon.rehash_clock import REHASH_FILE

START = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
CHECK_UNSUPPORTED = 63  # qemu-img check on a format without checks (raw)


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


def dump_db(engine, ignore=None):
    """Every row of every table, in primary-key order; the columns IGNORE
    ({table: {column, ...}}) names are left out."""
    ignore = ignore or {}
    rows = {}
    with engine.connect() as conn:
        for table in sorted(inspect(conn).get_table_names()):
            result = conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))
            keep = [i for i, k in enumerate(result.keys()) if k not in ignore.get(table, ())]
            rows[table] = [tuple(r[i] for i in keep) for r in result]
    return rows


def dump_files(data_dir):
    """(relative path, size) of everything in the data dir but the SQLite
    files and the time of a running server's last re-hash (its own
    bookkeeping, written by itself, not the farm's state)."""
    files = []
    for root, dirs, names in os.walk(data_dir):
        for name in dirs + names:
            if name.startswith("farm.db") or REHASH_FILE in name:
                continue
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, data_dir), os.path.getsize(path)))
    return sorted(files)


def dump(farm):
    """DB rows and data-dir files of FARM."""
    return dump_db(farm.engine), dump_files(farm.data_dir)


def audit_actions(farm):
    return [e.action for e in farm.audit.list()]


def qemu_io_write(path, pattern, offset, length, fmt="qcow2"):
    """Write LENGTH bytes of PATTERN at OFFSET into the image PATH with qemu-io."""
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", str(path)],
        check=True,
        capture_output=True,
    )


def assert_qemu_clean(directory):
    """Every image file in DIRECTORY passes `qemu-img info --backing-chain` and
    `qemu-img check` (raw: no checks to run), with RELATIVE backing names."""
    for name in sorted(os.listdir(directory)):
        if name == "manifest.json" or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        info = subprocess.run(
            ["qemu-img", "info", "--backing-chain", "--output=json", path],
            capture_output=True,
            text=True,
            check=False,
        )
        assert info.returncode == 0, (name, info.stderr)
        for layer in json.loads(info.stdout):
            backing = layer.get("backing-filename")
            assert backing is None or "/" not in backing, (name, backing)
            assert backing is None or layer.get("backing-filename-format"), (name, layer)
        check = subprocess.run(
            ["qemu-img", "check", path], capture_output=True, text=True, check=False
        )
        assert check.returncode in (0, CHECK_UNSUPPORTED), (name, check.stdout, check.stderr)


def backing_of(path):
    """(backing file name, backing format) of an image, or (None, None)."""
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    return info.get("backing-filename"), info.get("backing-filename-format")


def flat_copy(path, out):
    """The content seen through image PATH (and its chain) as a raw file OUT."""
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(path), str(out)], check=True, capture_output=True
    )
    return out


def write_version(farm, pattern, device="pm"):
    """Write 64 KiB of PATTERN, at 64 KiB x version number, into the open
    version the maintenance DEVICE boots read/write; return its ExportTarget."""
    target = farm.exports.resolve(device)
    assert target.writable and target.chain_formats[-1] == "qcow2"
    qemu_io_write(target.path, pattern, target.version * 65536, 65536)
    return target


def new_sealed_version(farm, pattern, to="production", vdisk="w", device="pm"):
    """Open a version of VDISK, write PATTERN into it, promote it TO; return the PromoteResult."""
    farm.versions.new(vdisk)
    write_version(farm, pattern, device)
    return farm.versions.promote(vdisk, to)


def store_files(farm, vdisk="w"):
    """The names in VDISK's store directory (but the chunk lists cached for
    peers, `.chunks-FILE.json`)."""
    return sorted(n for n in os.listdir(farm.store.root / vdisk) if not n.startswith(".chunks-"))
