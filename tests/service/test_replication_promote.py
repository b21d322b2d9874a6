"""`version promote --to production --when-replicated`: recorded now (the
version sealed and test at once if it was open), applied by
`apply_due_promotions` only once the last up server of its store holds it,
once even when two servers apply at once — SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from tests.service.helpers import dump_db, write_version
from tests.service.multi import beat, copy_vdisk, duo_fixture  # noqa: F401 (fixture)
from vdfarm.service.errors import Invalid


@pytest.fixture
def pair(duo):
    """a and b; w has a maintenance device pm; version 1 open on a with data."""
    a = duo["a"]
    a.devices.add("pm", vdisk="w", device_type="maintenance")
    a.versions.new("w")
    write_version(a, "0x5a")
    return duo


def newest(farm):
    info = farm.versions.list("w")[-1]
    return info.number, info.access, info.when_replicated


def audit_of(farm, action="version.promote"):
    return [e for e in farm.audit.list() if e.action == action]


def test_from_maintenance_seals_now_and_switches_when_the_last_server_holds_it(pair, clock):
    a, b = pair["a"], pair["b"]
    result = a.versions.promote("w", "production", when_replicated=True)
    assert (result.version.access, result.version.when_replicated) == ("test", "production")
    assert result.version.sha256 is not None  # sealed: it can replicate
    assert newest(a) == (1, "test", "production")
    scheduled = audit_of(a)[-1]
    assert scheduled.after["detail"] == "when_replicated: scheduled"
    assert scheduled.after["when_replicated"] == "production" and scheduled.actor == "test:me"

    beat(a, b)
    assert a.replication.apply_due_promotions() == []  # b does not hold it yet
    assert newest(a) == (1, "test", "production")

    copy_vdisk(a, b)
    beat(b)
    clock.advance(1)
    assert b.replication.apply_due_promotions() == ["w v1"]
    assert newest(a) == (1, "production", None)
    assert a.versions.list("w")[-1].production_at == clock.now
    applied = audit_of(a)[-1]
    assert (applied.actor, applied.after["detail"], applied.target_name) == (
        "system",
        "when_replicated",
        "w v1",
    )
    assert applied.before["access"] == "test" and applied.after["access"] == "production"
    assert a.replication.apply_due_promotions() == []  # applied once


def test_from_test_only_records_the_target(pair):
    a = pair["a"]
    a.versions.promote("w", "test")
    sealed = a.versions.list("w")[-1]
    result = a.versions.promote("w", "production", when_replicated=True)
    assert (result.version.access, result.version.sha256) == ("test", sealed.sha256)
    assert result.version.sealed_at == sealed.sealed_at
    assert newest(a) == (1, "test", "production")


def test_to_test_promotes_now(pair):
    a = pair["a"]
    result = a.versions.promote("w", "test", when_replicated=True)
    assert (result.version.access, result.version.when_replicated) == ("test", None)


def test_a_down_server_is_not_waited_for(pair, clock):
    a = pair["a"]
    a.versions.promote("w", "production", when_replicated=True)
    clock.advance(5)
    beat(a)  # b is down
    assert a.replication.apply_due_promotions() == ["w v1"]


def test_a_narrowed_store_waits_only_for_its_servers(pair):
    a, b = pair["a"], pair["b"]
    a.replication.set_store("default", servers=["a"])
    a.versions.promote("w", "production", when_replicated=True)
    beat(a, b)
    assert b.replication.apply_due_promotions() == ["w v1"]


def test_revert_and_a_plain_promote_drop_the_schedule(pair):
    a, b = pair["a"], pair["b"]
    a.versions.promote("w", "production", when_replicated=True)
    a.versions.revert("w")
    assert newest(a) == (1, "maintenance", None)
    a.versions.promote("w", "production", when_replicated=True)
    a.versions.promote("w", "production")
    assert newest(a) == (1, "production", None)
    copy_vdisk(a, b)
    beat(a, b)
    assert a.replication.apply_due_promotions() == []


def test_refusals_change_nothing(pair, clock):
    a = pair["a"]
    before = dump_db(a.engine)
    with pytest.raises(Invalid, match="--at or --when-replicated"):
        a.versions.promote("w", "production", at=clock.now, when_replicated=True)
    assert dump_db(a.engine) == before
    a.versions.promote("w", "production", at=clock.now + timedelta(hours=1))  # pending
    before = dump_db(a.engine)
    with pytest.raises(Invalid, match="pending production"):
        a.versions.promote("w", "production", when_replicated=True)
    assert dump_db(a.engine) == before


def test_two_servers_applying_at_once_apply_it_once(pair):
    a, b = pair["a"], pair["b"]
    a.versions.promote("w", "production", when_replicated=True)
    copy_vdisk(a, b)
    beat(a, b)
    results: list[list[str]] = []
    start = threading.Barrier(2)

    def apply(farm):
        start.wait()
        results.append(farm.replication.apply_due_promotions())

    threads = [threading.Thread(target=apply, args=(f,)) for f in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [[], ["w v1"]]
    assert [e.actor for e in audit_of(a)].count("system") == 1
    assert newest(a) == (1, "production", None)
