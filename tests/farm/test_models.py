"""Model rules the database enforces: UTC times, CHECKs, uniqueness, defaults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from tests.farm.postgres import fresh_postgres_url
from vdfarm.farm import db
from vdfarm.farm.models import Device, DeviceSession, Lock, Server, Vdisk, VdiskVersion


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = db.sqlite_url(tmp_path / "farm.db")
        db.upgrade(url)
        engine = db.make_engine(url)
        yield engine
        engine.dispose()
    else:
        with fresh_postgres_url() as url:
            db.upgrade(url)
            engine = db.make_engine(url)
            yield engine
            engine.dispose()


def vdisk(name="w", **kw):
    return Vdisk(name=name, size=512, format="raw", sha256="0" * 64, **kw)


def test_datetimes_come_back_aware_utc(engine):
    plus_two = datetime(2030, 1, 2, 5, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    with Session(engine) as s, s.begin():
        s.add(vdisk(created_at=plus_two))
    with Session(engine) as s:
        got = s.scalars(select(Vdisk)).one().created_at
    assert got.tzinfo == UTC
    assert got == plus_two
    assert got.hour == 3


def test_time_comparison_in_sql(engine):
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        v = vdisk()
        s.add(v)
        s.flush()
        s.add(Lock(vdisk_id=v.id, lease_expires_at=now))
    with Session(engine) as s:
        just_after = now + timedelta(microseconds=1)
        earlier = s.scalars(select(Lock).where(Lock.lease_expires_at < just_after)).all()
        later = s.scalars(select(Lock).where(Lock.lease_expires_at < now)).all()
    assert len(earlier) == 1 and later == []


def test_naive_datetime_is_refused(engine):
    with Session(engine) as s, pytest.raises(StatementError):
        s.add(vdisk(created_at=datetime(2030, 1, 1)))
        s.flush()


def test_defaults(engine):
    with Session(engine) as s, s.begin():
        v = vdisk()
        s.add(v)
        s.flush()
        s.add(Lock(vdisk_id=v.id))
        s.add(Device(name="d"))
    with Session(engine) as s:
        v = s.scalars(select(Vdisk)).one()
        assert (v.access_mode, v.write_cache_type, v.description) == ("standard", "server-disk", "")
        assert s.scalars(select(Lock)).one().fencing_token == 0
        assert s.scalars(select(Device)).one().device_type == "production"


@pytest.mark.parametrize(
    "row",
    [
        lambda: vdisk(access_mode="shared"),
        lambda: vdisk(write_cache_type="tmpfs"),
        lambda: Device(name="d", device_type="lab"),
    ],
)
def test_check_constraints(engine, row):
    with Session(engine) as s, pytest.raises(IntegrityError):
        s.add(row())
        s.flush()


def test_unique_names_and_macs(engine):
    with Session(engine) as s, s.begin():
        s.add(Device(name="a", mac="aa:bb:cc:dd:ee:ff"))
        s.add(Device(name="b"))
        s.add(Device(name="c"))
    with Session(engine) as s, pytest.raises(IntegrityError):
        s.add(Device(name="d", mac="aa:bb:cc:dd:ee:ff"))
        s.flush()
    with Session(engine) as s, pytest.raises(IntegrityError):
        s.add(Device(name="a"))
        s.flush()


def test_device_vdisk_foreign_key(engine):
    with Session(engine) as s, pytest.raises(IntegrityError):
        s.add(Device(name="d", vdisk_id=999))
        s.flush()


def version(vdisk_id, number=0, **kw):
    fields = {"file_name": f"v{number}.qcow2", "format": "qcow2", "access": "production"}
    return VdiskVersion(vdisk_id=vdisk_id, number=number, **(fields | kw))


@pytest.mark.parametrize(
    "make",
    [
        lambda vid, sid, did: version(vid, access="staging"),
        lambda vid, sid, did: version(vid, format="vhd"),
        lambda vid, sid, did: version(vid, number=1),  # (vdisk_id, number) is unique
        lambda vid, sid, did: DeviceSession(
            device_id=did, server_id=sid, vdisk_id=vid, version=0
        ),  # one session per device
    ],
)
def test_version_and_session_constraints(engine, make):
    with Session(engine) as s, s.begin():
        v, device = vdisk(), Device(name="d")
        server = Server(uuid="u" * 36, name="s", hostname="h", store_path="/s", version="0")
        s.add_all([v, device, server])
        s.flush()
        s.add(version(v.id, number=1))
        s.add(DeviceSession(device_id=device.id, server_id=server.id, vdisk_id=v.id, version=1))
        ids = (v.id, server.id, device.id)
    with Session(engine) as s, pytest.raises(IntegrityError):
        s.add(make(*ids))
        s.flush()
    with Session(engine) as s:
        assert s.scalars(select(Vdisk)).one().max_versions == 5
