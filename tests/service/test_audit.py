"""The audit trail: one row per change with before/after, filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vdfarm.service.errors import Invalid, NotFound


def test_every_change_is_recorded_in_order(farm, raw_image, clock):
    farm.vdisks.import_image("w", raw_image)
    clock.advance(60)
    farm.devices.add("pc1")
    farm.devices.assign("pc1", "w")
    farm.devices.set("pc1", description="x")
    farm.vdisks.set("w", description="y")
    farm.devices.delete("pc1")
    farm.vdisks.delete("w")
    farm.vdisks.list()
    farm.devices.list()
    entries = farm.audit.list()
    assert [e.action for e in entries] == [
        "server.init",
        "vdisk.import",
        "device.add",
        "device.assign",
        "device.set",
        "vdisk.set",
        "device.delete",
        "vdisk.delete",
    ]
    assert {e.actor for e in entries} == {"test:me"}
    delete = entries[-1]
    assert delete.before["name"] == "w" and delete.after is None
    assert entries[4].before["description"] == "" and entries[4].after["description"] == "x"


def test_since_and_limit(farm, raw_image, clock):
    farm.vdisks.import_image("a", raw_image)
    clock.advance(3600)
    cut = clock.now
    farm.vdisks.import_image("b", raw_image)
    farm.vdisks.import_image("c", raw_image)
    assert [e.target_name for e in farm.audit.list(since=cut)] == ["b", "c"]
    assert [e.target_name for e in farm.audit.list(limit=2)] == ["b", "c"]
    assert farm.audit.list(since=datetime(2100, 1, 1, tzinfo=UTC)) == []


def test_bad_filters(farm):
    with pytest.raises(Invalid):
        farm.audit.list(since=datetime(2030, 1, 1))
    with pytest.raises(Invalid):
        farm.audit.list(limit=0)


def test_explicit_actor_wins(farm, raw_image):
    farm.vdisks.import_image("w", raw_image, actor="api:alice")
    assert farm.audit.list()[-1].actor == "api:alice"


def test_failed_change_leaves_no_audit_row(farm):
    count = len(farm.audit.list())
    with pytest.raises(NotFound):
        farm.devices.add("pc1", vdisk="missing")
    assert len(farm.audit.list()) == count
