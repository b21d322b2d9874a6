"""/api/v1/audit: the trail, filtered by time and count."""

from __future__ import annotations

from tests.api.conftest import OTHER_ACTOR, error_of


def test_list_since_and_limit(admin, local, farm, populated, clock):
    clock.advance(60)
    admin.patch("/api/v1/devices/pc1", json={"description": "later"})
    entries = local.get("/api/v1/audit").json()
    assert [e["action"] for e in entries] == [
        "server.init",
        "vdisk.import",
        "device.add",
        "device.set",
    ]
    last = entries[-1]
    assert (last["actor"], last["target_type"], last["target_name"]) == (
        OTHER_ACTOR,
        "device",
        "pc1",
    )
    assert (last["before"]["description"], last["after"]["description"]) == ("", "later")
    assert [e["action"] for e in local.get("/api/v1/audit?limit=2").json()] == [
        "device.add",
        "device.set",
    ]
    since = local.get("/api/v1/audit", params={"since": "2030-01-01T12:00:30Z"}).json()
    assert [e["action"] for e in since] == ["device.set"]
    assert local.get("/api/v1/audit", params={"since": "2031-01-01T00:00:00+00:00"}).json() == []


def test_bad_filters_are_422(local):
    assert "query field since" in error_of(
        local.get("/api/v1/audit", params={"since": "2030-01-01T00:00:00"}), 422
    )
    assert "query field since" in error_of(local.get("/api/v1/audit?since=yesterday"), 422)
    assert "query field limit" in error_of(local.get("/api/v1/audit?limit=0"), 422)
