"""A running device keeps the version it booted: after a promotion, its
agent's failover login (naming that version) is placed on servers holding
it, the reservation records it and the chosen server's export resolution
serves it (so does the device's own session row there); a boot still gets
the current version; versions a device may not keep are refused, on a
farm of two servers sharing SQLite or PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.service.multi import (
    add_devices,
    beat,
    copy_vdisk,
    duo_fixture,  # noqa: F401  (the fixture)
    vdisk_id,
)
from vdfarm.farm.models import LoginReservation
from vdfarm.service.errors import Invalid, NotFound, NotInStore
from vdfarm.service.login import login


def chosen(result):
    return [result.server.name] + [s.name for s in result.alternatives]


def reserved_version(farm, device_id):
    with farm.database.session() as session:
        return session.scalar(
            select(LoginReservation.version).where(LoginReservation.device_id == device_id)
        )


@pytest.fixture
def promoted(duo):
    """Device pc000 booted version 0 of w (its session on a); then version
    1 was made and promoted to production on a, which alone holds it."""
    a, b = duo["a"], duo["b"]
    [device_id] = add_devices(a, 1)
    a.sessions.started(device_id, vdisk_id(a), 0)
    a.versions.new("w")
    a.versions.promote("w", "production")
    beat(a, b)
    return duo, device_id


def test_a_failover_login_keeps_the_booted_version_on_its_holders(promoted):
    (duo, device_id) = promoted
    a, b = duo["a"], duo["b"]
    boot = login(a, "pc000", reserve=False)
    assert (boot.version, chosen(boot)) == (1, ["a"])  # a boot: the current version

    kept = login(a, "pc000", exclude=["a"], version=0)
    assert (kept.version, chosen(kept)) == (0, ["b"])
    assert kept.sha256 == a.versions.list("w")[0].sha256 != boot.sha256
    assert kept.size == boot.size
    assert reserved_version(a, device_id) == 0

    target = b.exports.resolve("pc000")  # b honours the reservation
    assert (target.version, target.sha256) == (0, kept.sha256)
    assert [p.name for p in target.chain] == [a.versions.list("w")[0].file]


def test_a_fresh_boot_gets_the_current_version_again(promoted):
    (duo, device_id) = promoted
    a, b = duo["a"], duo["b"]
    login(a, "pc000", exclude=["a"], version=0)
    assert b.exports.resolve("pc000").version == 0
    again = login(b, "pc000")  # the device rebooted: no version
    assert (again.version, reserved_version(a, device_id)) == (1, None)
    assert a.exports.resolve("pc000").version == 1
    with pytest.raises(NotInStore, match="version 1 of vDisk w is not in this server's store"):
        b.exports.resolve("pc000")


def test_the_session_row_on_this_server_keeps_the_version(promoted, clock):
    (duo, device_id) = promoted
    a, b = duo["a"], duo["b"]
    assert a.exports.resolve("pc000").version == 0  # its session on a (a reconnect)
    login(a, "pc000", exclude=["a"], version=0)
    b.sessions.started(device_id, vdisk_id(a), 0)  # it arrived on b
    assert reserved_version(a, device_id) is None  # the reservation is gone
    clock.advance(60)
    beat(a, b)
    assert b.exports.resolve("pc000").version == 0  # its session is on b now
    assert a.exports.resolve("pc000").version == 1  # a: no session, no reservation
    b.sessions.ended(device_id)
    copy_vdisk(a, b)
    beat(a, b)
    assert b.exports.resolve("pc000").version == 1  # ended: its next connect is a boot


def test_a_stale_reservation_is_not_honoured(promoted, clock):
    (duo, device_id) = promoted
    a, b = duo["a"], duo["b"]
    login(a, "pc000", exclude=["a"], version=0)
    copy_vdisk(a, b)  # b holds both versions now
    clock.advance(31)  # past the reservation's lifetime, never connected
    beat(a, b)
    assert b.exports.resolve("pc000").version == 1


def test_a_malformed_version_is_refused(promoted):
    (duo, device_id) = promoted
    for bad in (-1, True, "0", 1.0, 2**31):
        with pytest.raises(Invalid, match="^invalid version: give a whole number from 0 to"):
            login(duo["a"], "pc000", version=bad)
    assert reserved_version(duo["a"], device_id) is None


def test_a_version_that_is_gone_or_not_allowed_is_refused(promoted):
    (duo, device_id) = promoted
    a, b = duo["a"], duo["b"]
    with pytest.raises(NotFound, match="^vDisk w has no version 7 any more .*must boot again"):
        login(a, "pc000", version=7)
    a.versions.new("w")  # version 2, open for maintenance
    with pytest.raises(Invalid, match="version 2 of vDisk w is open for maintenance"):
        login(a, "pc000", version=2)
    a.versions.promote("w", "test")
    beat(a, b)
    with pytest.raises(Invalid, match="version 2 of vDisk w is test: production device pc000"):
        login(a, "pc000", version=2)
    a.devices.add("t1", vdisk="w", device_type="test")
    assert login(a, "t1", version=2, reserve=False).version == 2  # a test device may
    assert reserved_version(a, device_id) is None  # refusals wrote nothing


def test_a_version_merged_away_is_refused_by_login_and_export(promoted):
    (duo, device_id) = promoted
    a = duo["a"]
    login(a, "pc000", exclude=["b"], version=1)  # the device runs version 1 ...
    a.versions.new("w")
    a.versions.promote("w", "production")
    a.sessions.ended(device_id)
    a.versions.merge("w")  # ... which is folded into version 2 and deleted
    assert [v.number for v in a.versions.list("w")] == [0, 2]
    with pytest.raises(NotFound, match="no version 1 any more"):
        login(a, "pc000", version=1)
    with pytest.raises(NotFound, match="no version 1 any more"):  # its reservation
        a.exports.resolve("pc000")
