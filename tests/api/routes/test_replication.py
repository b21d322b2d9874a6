"""/api/v1/replication (status, start) and /api/v1/store-sets, /stores
(store sets): answers, audit actors, roles, and refusals that change nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_ACTOR, OTHER_HOST, error_of, unchanged


def test_status_rows(local, farm, populated):
    farm.servers.heartbeat()
    [row] = local.get("/api/v1/replication").json()
    size = farm.versions.list("w")[0].size
    assert row == {
        "vdisk": "w",
        "version": 0,
        "server": farm.server_name,
        "state": "present",
        "pending": False,
        "bytes_done": size,
        "bytes_total": size,
        "rate_bps": None,
        "eta_s": None,
        "reason": "",
        "peer": None,
        "updated_at": None,
    }
    assert local.get("/api/v1/replication", params={"vdisk": "w", "version": 0}).json() == [row]


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"vdisk": "nope"}, 404, "no vDisk named nope"),
        ({"vdisk": "w", "version": 3}, 404, "vDisk w has no version 3"),
        ({"version": 0}, 400, "give the vDisk"),
        ({"vdisk": "w", "version": -1}, 422, "query field version"),
    ],
)
def test_status_refusals(local, populated, params, status, says):
    assert says in error_of(local.get("/api/v1/replication", params=params), status)


def test_start_now(admin, farm, populated):
    farm.versions.new("w")
    started = admin.post("/api/v1/replication/start", json={"vdisk": "w"}).json()
    assert (started["vdisk"], started["version"]) == ("w", 0)
    assert started["at"].startswith("2030-01-01T12:00:00")
    entry = farm.audit.list(limit=1)[0]
    assert (entry.action, entry.actor, entry.target_name) == (
        "replication.start",
        OTHER_ACTOR,
        "w v0",
    )
    with unchanged(farm):
        assert "open for maintenance" in error_of(
            admin.post("/api/v1/replication/start", json={"vdisk": "w", "version": 1}), 400
        )
        error_of(admin.post("/api/v1/replication/start", json={"vdisk": "nope"}), 404)
        error_of(admin.post("/api/v1/replication/start", json={"vdisk": "w", "bogus": 1}), 422)


def test_store_sets(admin, local, farm, populated):
    assert [s["name"] for s in local.get("/api/v1/store-sets").json()] == ["default"]
    me = farm.server_name
    made = admin.post(
        "/api/v1/stores",
        json={"name": "lab", "servers": [me], "max_rate": "50MB/s", "windows": ["22:00-06:00"]},
    )
    assert made.status_code == 201, made.text
    assert made.json() == {
        "name": "lab",
        "servers": [me],
        "max_rate_bps": 50_000_000,
        "windows": ["22:00-06:00"],
        "vdisks": [],
    }
    changed = admin.patch("/api/v1/stores/lab", json={"max_rate": None, "servers": []}).json()
    assert (changed["max_rate_bps"], changed["servers"], changed["windows"]) == (
        None,
        [],
        ["22:00-06:00"],
    )
    assert admin.patch("/api/v1/stores/lab", json={"max_rate": 1000}).json()["max_rate_bps"] == 1000
    assert admin.patch("/api/v1/vdisks/w", json={"store": "lab"}).json()["store"] == "lab"
    assert local.get("/api/v1/store-sets").json()[1]["vdisks"] == ["w"]
    assert [e.action for e in farm.audit.list() if e.actor == OTHER_ACTOR] == [
        "store.add",
        "store.set",
        "store.set",
        "vdisk.set",
    ]
    assert local.get("/api/v1/stores").json()[0]["server"] == me  # the holdings, as before


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("post", "/stores", {"name": "default"}, 409, "store default already exists"),
        ("post", "/stores", {"name": "x", "max_rate": "fast"}, 400, "invalid rate 'fast'"),
        ("post", "/stores", {"name": "x", "windows": ["25:00-06:00"]}, 400, "hour must be"),
        ("post", "/stores", {"name": "x", "servers": ["ghost"]}, 404, "no server named ghost"),
        ("post", "/stores", {"name": "x", "speed": 1}, 422, "body field speed"),
        ("patch", "/stores/nope", {"max_rate": "1M"}, 404, "no store named nope"),
        ("patch", "/stores/default", {}, 400, "nothing to change"),
        ("patch", "/vdisks/w", {"store": "nope"}, 404, "no store named nope"),
    ],
)
def test_store_refusals_change_nothing(admin, farm, populated, method, path, body, status, says):
    with unchanged(farm):
        response = getattr(admin, method)(f"/api/v1{path}", json=body)
        assert says in error_of(response, status)


def test_promote_when_replicated(admin, farm, populated):
    admin.post("/api/v1/vdisks/w/versions")
    body = {"to": "production", "when_replicated": True}
    result = admin.post("/api/v1/vdisks/w/versions/promote", json=body).json()
    assert (result["version"]["access"], result["version"]["when_replicated"]) == (
        "test",
        "production",
    )
    with unchanged(farm):
        error_of(
            admin.post(
                "/api/v1/vdisks/w/versions/promote",
                json={"to": "production", "when_replicated": "yes"},
            ),
            422,
        )


def test_read_token_reads_status_but_cannot_change(app, farm, populated):
    secret = farm.tokens.add("r", "read", actor="test").secret
    reader = TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {secret}"})
    assert reader.get("/api/v1/replication").status_code == 200
    assert reader.get("/api/v1/store-sets").status_code == 200
    with unchanged(farm):
        error_of(reader.post("/api/v1/replication/start", json={"vdisk": "w"}), 403)
        error_of(reader.post("/api/v1/stores", json={"name": "x"}), 403)
        error_of(reader.patch("/api/v1/stores/default", json={"max_rate": "1M"}), 403)
