"""A farm of several servers in one test: one data dir per server, one shared
database (SQLite file, or a throw-away PostgreSQL database), one clock."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest

from tests.farm.postgres import fresh_postgres_url
from tests.service.helpers import make_raw
from vdfarm.farm import db
from vdfarm.service.context import Farm


@contextlib.contextmanager
def database_url(kind: str, tmp_path) -> Iterator[str]:
    """A fresh database URL of KIND ('sqlite' or 'postgresql'; skips if unreachable)."""
    if kind == "sqlite":
        yield db.sqlite_url(tmp_path / "farm.db")
    else:
        with fresh_postgres_url() as url:
            yield url


@contextlib.contextmanager
def servers(tmp_path, url: str, names, clock) -> Iterator[dict[str, Farm]]:
    """Name -> Farm of each server NAMES, initialised on URL."""
    farms: dict[str, Farm] = {}
    try:
        for name in names:
            farms[name] = Farm.init(
                tmp_path / name, url, server_name=name, actor="test:me", clock=clock
            )
        yield farms
    finally:
        for farm in farms.values():
            farm.close()


def copy_vdisk(source: Farm, target: Farm, vdisk: str = "w") -> None:
    """Replicate by hand: copy VDISK's store directory from SOURCE to TARGET."""
    shutil.rmtree(target.store.root / vdisk, ignore_errors=True)
    shutil.copytree(source.store.root / vdisk, target.store.root / vdisk)


def beat(*farms: Farm) -> None:
    """A heartbeat (with inventory) from each of FARMS."""
    for farm in farms:
        farm.servers.heartbeat()


def add_devices(farm: Farm, count: int, vdisk: str = "w", prefix: str = "pc") -> list[int]:
    """COUNT devices on VDISK; return their ids."""
    ids = []
    for n in range(count):
        farm.devices.add(f"{prefix}{n:03}", vdisk=vdisk)
        ids.append(farm.exports.resolve(f"{prefix}{n:03}").device_id)
    return ids


def vdisk_id(farm: Farm, vdisk: str = "w") -> int:
    return farm.exports.view(vdisk).vdisk_id


@pytest.fixture(name="duo", params=["sqlite", "postgresql"])
def duo_fixture(request, tmp_path, clock):
    """Servers a and b on one database; vDisk w imported on a and copied to b;
    both have just beaten."""
    with (
        database_url(request.param, tmp_path) as url,
        servers(tmp_path, url, ["a", "b"], clock) as farms,
    ):
        farms["a"].vdisks.import_image("w", make_raw(tmp_path / "w.raw"))
        copy_vdisk(farms["a"], farms["b"])
        beat(farms["a"], farms["b"])
        yield farms
