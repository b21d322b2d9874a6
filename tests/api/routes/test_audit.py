"""/api/v1/audit: the trail, filtered by time and count, a page at a time."""

from __future__ import annotations

from fastapi.testclient import TestClient

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


def add_entries(farm, count):
    for n in range(count):
        farm.devices.add(f"d{n}")


def test_pages_have_a_default_and_a_maximum(local, farm):
    """Fails before: without a limit the whole table came back."""
    add_entries(farm, 105)
    total = len(farm.audit.list())
    page = local.get("/api/v1/audit")
    entries = page.json()
    assert len(entries) == 100 < total
    assert entries[-1]["target_name"] == "d104"  # the newest, oldest first
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert page.headers["x-next-before-id"] == str(entries[0]["id"])
    assert "query field limit" in error_of(local.get("/api/v1/audit?limit=1001"), 422)
    assert len(local.get("/api/v1/audit?limit=1000").json()) == total


def test_before_id_walks_back_to_the_first_entry(local, farm):
    add_entries(farm, 7)
    ids = [e.id for e in farm.audit.list()]
    seen, before = [], None
    while True:
        params = {"limit": 3} | ({"before_id": before} if before else {})
        page = local.get("/api/v1/audit", params=params)
        seen[:0] = [e["id"] for e in page.json()]
        before = page.headers.get("x-next-before-id")
        if before is None:
            break
    assert seen == ids
    assert "query field before_id" in error_of(local.get("/api/v1/audit?before_id=0"), 422)


def test_the_client_pages_back_for_more_than_a_page(farm, app, token):
    from vdfarm.client.farm import AUDIT_PAGE, FarmClient

    add_entries(farm, 5)
    client = FarmClient(
        "http://testserver",
        token,
        http=TestClient(app, client=("192.0.2.7", 1), base_url="http://testserver"),
    )
    assert client.audit.list() == farm.audit.list()
    assert client.audit.list(limit=2) == farm.audit.list(limit=2)
    assert AUDIT_PAGE == 1000
