"""/api/v1/devices: add, list, show (by name or MAC), change, assign, delete —
refusals change nothing, concurrent adds of one name: one wins, others 409."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import error_of, unchanged


def test_add_list_show(admin, local, farm, populated):
    response = admin.post(
        "/api/v1/devices",
        json={
            "name": "pc2",
            "mac": "AA-BB-CC-00-00-02",
            "vdisk": "w",
            "device_type": "test",
            "description": "lab",
        },
    )
    assert response.status_code == 201, response.text
    info = response.json()
    assert (info["name"], info["mac"], info["vdisk"], info["device_type"], info["description"]) == (
        "pc2",
        "aa:bb:cc:00:00:02",
        "w",
        "test",
        "lab",
    )
    assert [d["name"] for d in local.get("/api/v1/devices").json()] == ["pc1", "pc2"]
    shown = local.get("/api/v1/devices/aa:bb:cc:00:00:02").json()
    assert shown["name"] == "pc2" and shown["session"] is None
    assert farm.devices.show("pc2").mac == "aa:bb:cc:00:00:02"


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"name": "pc1"}, 409, "device pc1 already exists"),
        ({"name": "pc2", "mac": "aa:bb:cc:00:00:01"}, 409, "already used by device pc1"),
        ({"name": "pc2", "vdisk": "nope"}, 404, "no vDisk named nope"),
        ({"name": "pc2", "mac": "not-a-mac"}, 400, "not-a-mac"),
        ({"name": "-pc2"}, 400, "invalid device name"),
        ({"name": "pc2", "device_type": "boss"}, 422, "body field device_type"),
    ],
)
def test_add_refusals_change_nothing(admin, farm, populated, body, status, says):
    with unchanged(farm):
        assert says in error_of(admin.post("/api/v1/devices", json=body), status)


def test_concurrent_adds_of_one_name_one_wins(admin, farm):
    statuses = []

    def post(index):
        response = admin.post(
            "/api/v1/devices", json={"name": "racer", "description": f"try {index}"}
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [409] * 7
    assert [d.name for d in farm.devices.list()] == ["racer"]
    assert [e.action for e in farm.audit.list()].count("device.add") == 1


def test_show_unknown_is_404(local):
    assert error_of(local.get("/api/v1/devices/nope"), 404) == "no device named nope"


def test_patch_changes_fields(admin, farm, populated):
    info = admin.patch(
        "/api/v1/devices/pc1", json={"device_type": "maintenance", "description": "bench"}
    ).json()
    assert (info["device_type"], info["description"], info["mac"]) == (
        "maintenance",
        "bench",
        "aa:bb:cc:00:00:01",
    )
    info = admin.patch("/api/v1/devices/aa:bb:cc:00:00:01", json={"mac": None}).json()
    assert (info["name"], info["mac"], info["description"]) == ("pc1", None, "bench")


def test_patch_assigns_the_vdisk(admin, farm, populated):
    assert admin.patch("/api/v1/devices/pc1", json={"vdisk": None}).json()["vdisk"] is None
    assert farm.devices.show("pc1").vdisk is None
    assert admin.patch("/api/v1/devices/pc1", json={"vdisk": "w"}).json()["vdisk"] == "w"
    assert [e.action for e in farm.audit.list(limit=2)] == ["device.assign"] * 2


@pytest.mark.parametrize(
    "name, body, status, says",
    [
        ("pc1", {}, 400, "nothing to change"),
        ("pc1", {"vdisk": "nope"}, 404, "no vDisk named nope"),
        ("pc1", {"vdisk": None, "description": "x"}, 422, "cannot also change description"),
        ("pc1", {"mac": "zz"}, 400, "zz"),
        ("nope", {"description": "x"}, 404, "no device named nope"),
        ("pc1", {"name": "pc9"}, 422, "body field name"),
    ],
)
def test_patch_refusals_change_nothing(admin, farm, populated, name, body, status, says):
    farm.devices.add("pc2", mac="aa:bb:cc:00:00:02")
    with unchanged(farm):
        assert says in error_of(admin.patch(f"/api/v1/devices/{name}", json=body), status)


def test_patch_to_a_taken_mac_is_409(admin, farm, populated):
    farm.devices.add("pc2", mac="aa:bb:cc:00:00:02")
    with unchanged(farm):
        error_of(admin.patch("/api/v1/devices/pc1", json={"mac": "aa:bb:cc:00:00:02"}), 409)


def test_delete(admin, local, farm, populated):
    response = admin.delete("/api/v1/devices/pc1")
    assert response.status_code == 200 and response.json()["name"] == "pc1"
    error_of(local.get("/api/v1/devices/pc1"), 404)
    with unchanged(farm):
        error_of(admin.delete("/api/v1/devices/pc1"), 404)


FAILOVER = {"from": "s1", "to": "s2", "pause_ms": 380, "retried": 2, "reason": "s1 died"}


def test_an_agents_failover_report_is_audited_and_shown(app, farm, populated):
    secret = farm.tokens.add("agent-pc1", "operator", actor="test").secret
    agent = TestClient(app, headers={"Authorization": f"Bearer {secret}"})
    answer = agent.post("/api/v1/devices/aa-bb-cc-00-00-01/failover", json=FAILOVER)
    assert answer.status_code == 201, answer.text
    assert answer.json()["device"] == "pc1" and answer.json()["pause_ms"] == 380
    [event] = [e for e in farm.audit.list() if e.action == "device.failover"]
    assert (event.target_name, event.actor.split("@")[0]) == ("pc1", "token:agent-pc1")
    shown = agent.get("/api/v1/devices/pc1").json()["failovers"]
    assert shown["count"] == 1
    assert {k: shown["last"][k] for k in FAILOVER} == FAILOVER


@pytest.mark.parametrize(
    ("name", "body", "status", "says"),
    [
        ("nobody", FAILOVER, 404, "no device named nobody"),
        ("pc1", {**FAILOVER, "pause_ms": -1}, 422, "pause_ms"),
        ("pc1", {**FAILOVER, "retried": "x"}, 422, "retried"),
        ("pc1", {**FAILOVER, "reason": "r" * 201}, 422, "reason"),
        ("pc1", {**FAILOVER, "extra": 1}, 422, "extra"),
        ("pc1", {k: v for k, v in FAILOVER.items() if k != "to"}, 422, "to"),
        ("pc1", {**FAILOVER, "from": "../etc"}, 400, "invalid server name"),
        ("pc1", {**FAILOVER, "reason": "two\nlines"}, 400, "one line"),
    ],
)
def test_bad_failover_reports_change_nothing(admin, farm, populated, name, body, status, says):
    with unchanged(farm):
        assert says in error_of(admin.post(f"/api/v1/devices/{name}/failover", json=body), status)


def test_a_read_token_may_not_report_a_failover(app, farm, populated):
    secret = farm.tokens.add("watcher", "read", actor="test").secret
    reader = TestClient(app, headers={"Authorization": f"Bearer {secret}"})
    assert reader.post("/api/v1/devices/pc1/failover", json=FAILOVER).status_code == 403
