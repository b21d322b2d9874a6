"""The token check on real routes: reads open on loopback, changes need the
token, a refused request changes nothing (and is refused before its body is
read); changes are audited as token:<name>@<client>."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import LOOPBACK, LOOPBACK_ACTOR, OTHER_ACTOR, error_of, unchanged


def test_reads_are_open_on_loopback(local, populated):
    assert [v["name"] for v in local.get("/api/v1/vdisks").json()] == ["w"]
    assert local.get("/api/v1/devices/pc1").json()["vdisk"] == "w"


def test_reads_from_other_hosts_need_the_token(remote, admin, populated):
    detail = error_of(remote.get("/api/v1/vdisks"), 401)
    assert "required for reads from other hosts" in detail
    assert remote.get("/api/v1/vdisks").headers["www-authenticate"] == "Bearer"
    assert admin.get("/api/v1/vdisks").status_code == 200


def test_changes_need_the_token_even_on_loopback(local, farm, populated):
    with unchanged(farm):
        for response in (
            local.post("/api/v1/devices", json={"name": "pc2"}),
            local.patch("/api/v1/devices/pc1", json={"description": "x"}),
            local.delete("/api/v1/devices/pc1"),
            local.post("/api/v1/vdisks/w/versions"),
            local.post("/api/v1/locks/w/release"),
        ):
            assert "required for every change" in error_of(response, 401)


def test_wrong_or_malformed_token_is_refused(app, farm, token, populated):
    for header in ("Bearer nope", f"Bearer {token[:-1]}", f"Basic {token}", "Bearer"):
        client = TestClient(app, client=LOOPBACK, headers={"Authorization": header})
        with unchanged(farm):
            error_of(client.post("/api/v1/devices", json={"name": "pc2"}), 401)
            error_of(client.get("/api/v1/devices"), 401)  # a wrong token is wrong for reads too


def test_token_is_checked_before_the_body(local, farm):
    with unchanged(farm):
        response = local.post(
            "/api/v1/devices", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert "required for every change" in error_of(response, 401)


def test_changes_are_audited_as_the_api_client(admin, farm, populated):
    admin.post("/api/v1/devices", json={"name": "pc2"})
    admin.patch("/api/v1/vdisks/w", json={"description": "golden"})
    entries = farm.audit.list(limit=2)
    assert [(e.action, e.actor) for e in entries] == [
        ("device.add", OTHER_ACTOR),
        ("vdisk.set", OTHER_ACTOR),
    ]


def test_loopback_client_with_token_is_audited_by_its_address(app, token, farm):
    client = TestClient(app, client=LOOPBACK, headers={"Authorization": f"Bearer {token}"})
    assert client.post("/api/v1/devices", json={"name": "pc9"}).status_code == 201
    assert farm.audit.list(limit=1)[0].actor == LOOPBACK_ACTOR
