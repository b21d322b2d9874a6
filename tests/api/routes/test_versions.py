"""/api/v1/vdisks/{name}/versions: open, promote, revert, override, merge,
delete the newest — through their whole cycle, and refusals change nothing."""

from __future__ import annotations

import pytest

from tests.api.conftest import OTHER_ACTOR, error_of, job_of, unchanged

BASE = "/api/v1/vdisks/w/versions"


def accesses(local):
    return [(v["number"], v["access"]) for v in local.get(BASE).json()]


def test_version_cycle(admin, local, farm, populated, clock):
    assert accesses(local) == [(0, "production")]
    response = admin.post(BASE)
    assert response.status_code == 201, response.text
    assert (response.json()["number"], response.json()["parent"]) == (1, 0)
    assert accesses(local) == [(0, "production"), (1, "maintenance")]

    result = admin.post(f"{BASE}/promote", json={"to": "test"}).json()
    assert result["version"]["access"] == "test" and result["version"]["sha256"]
    assert result["merged"] is None
    assert admin.post(f"{BASE}/revert").json()["access"] == "maintenance"
    admin.post(f"{BASE}/promote", json={"to": "test"})
    later = "2030-01-02T00:00:00Z"
    pending = admin.post(f"{BASE}/promote", json={"to": "production", "at": later}).json()
    assert pending["version"]["access"] == "pending"
    assert pending["version"]["production_at"].startswith("2030-01-02T00:00:00")
    clock.advance(86400)
    assert accesses(local)[-1] == (1, "production")

    pinned = admin.post(f"{BASE}/override", json={"version": 0}).json()
    assert pinned == {"vdisk": "w", "version": 0, "previous": None}
    assert farm.vdisks.show("w").override_version == 0
    cleared = admin.post(f"{BASE}/override", json={"version": None}).json()
    assert cleared == {"vdisk": "w", "version": None, "previous": 0}

    actions = [(e.action, e.actor) for e in farm.audit.list() if e.actor == OTHER_ACTOR]
    assert [a for a, _ in actions] == [
        "version.new",
        "version.promote",
        "version.revert",
        "version.promote",
        "version.promote",
        "version.override",
        "version.override",
    ]


def test_merge(admin, local, farm, populated):
    for _ in range(2):
        admin.post(BASE)
        admin.post(f"{BASE}/promote", json={"to": "production"})
    job = job_of(admin, admin.post(f"{BASE}/merge"))
    assert (job["state"], job["kind"], job["target"], job["actor"]) == (
        "done",
        "merge",
        "w",
        OTHER_ACTOR,
    )
    result = job["result"]
    assert (result["kept"], result["base"], result["removed"], result["new_base"]) == (
        2,
        0,
        [1],
        False,
    )
    assert accesses(local) == [(0, "production"), (2, "production")]
    admin.post(BASE)
    admin.post(f"{BASE}/promote", json={"to": "production"})
    job = job_of(admin, admin.post(f"{BASE}/merge", json={"new_base": True}))
    assert job["state"] == "done" and job["error"] is None
    result = job["result"]
    assert (result["kept"], result["new_base"]) == (3, True)
    assert job["step"] == "hash" and job["done"] == job["total"] > 0
    assert [v["number"] for v in local.get(BASE).json()] == [3]
    assert farm.vdisks.verify("w").ok


def test_delete_newest(admin, local, farm, populated):
    admin.post(BASE)
    response = admin.delete(f"{BASE}/newest")
    assert response.status_code == 200 and response.json()["number"] == 1
    assert accesses(local) == [(0, "production")]
    with unchanged(farm):
        assert "base" in error_of(admin.delete(f"{BASE}/newest"), 400)


@pytest.mark.parametrize(
    "method, path, body, status, says",
    [
        ("post", BASE, None, 409, "already open for maintenance"),
        ("post", f"{BASE}/promote", {"to": "prod"}, 422, "body field to"),
        (
            "post",
            f"{BASE}/promote",
            {"to": "production", "at": "2030-01-02T00:00:00"},
            422,
            "body field at",
        ),
        ("post", f"{BASE}/promote", {}, 422, "body field to: Field required"),
        ("post", f"{BASE}/override", {"version": -1}, 422, "body field version"),
        ("post", f"{BASE}/override", {}, 422, "body field version: Field required"),
        ("post", f"{BASE}/override", {"version": 1}, 400, "open for maintenance"),
        ("post", f"{BASE}/override", {"version": 7}, 404, "has no version 7"),
        ("post", f"{BASE}/merge", {"new_base": "maybe"}, 422, "body field new_base"),
        ("post", "/api/v1/vdisks/nope/versions/merge", None, 404, "no vDisk named nope"),
        ("post", f"{BASE}/merge", None, 400, "nothing to merge"),
        ("get", "/api/v1/vdisks/nope/versions", None, 404, "no vDisk named nope"),
        ("post", "/api/v1/vdisks/nope/versions", None, 404, "no vDisk named nope"),
        ("post", "/api/v1/vdisks/nope/versions/revert", None, 404, "no vDisk named nope"),
    ],
)
def test_refusals_change_nothing(admin, farm, populated, method, path, body, status, says):
    admin.post(BASE)  # version 1, open for maintenance
    with unchanged(farm):
        kwargs = {} if body is None else {"json": body}
        assert says in error_of(getattr(admin, method)(path, **kwargs), status)


def test_private_vdisk_has_no_versions(admin, farm, populated):
    farm.vdisks.set("w", mode="private")
    with unchanged(farm):
        assert "private mode" in error_of(admin.post(BASE), 400)
