"""Roles on real routes: `read` GETs only, `operator` runs devices and their
sessions, `admin` everything; a revoked token is refused at once; every
refusal (401/403) changes nothing; changes are audited as token:NAME@address;
no route lets a caller without a token add an audit row."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_HOST, error_of, unchanged
from vdfarm.api import roles
from vdfarm.api.app import API_PREFIX

OPEN_ROUTES = {
    ("POST", "/login"),
    ("GET", "/boot/files/{vdisk}/{version}/{kind}"),
    ("GET", "/boot/ipxe"),
}


@pytest.fixture
def as_role(app, farm):
    """A client from another host holding a fresh token of ROLE."""

    def client(role: str, name: str | None = None) -> TestClient:
        secret = farm.tokens.add(name or f"t-{role}", role, actor="test").secret
        return TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {secret}"})

    return client


def app_routes(app):
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            yield method.upper(), path.removeprefix(API_PREFIX)


def test_every_route_is_in_the_role_table(app):
    routes = set(app_routes(app))
    assert routes - OPEN_ROUTES == set(roles.MINIMAL_ROLE)
    for method, path in roles.MINIMAL_ROLE:
        if method == "GET" and path.startswith("/replication/files/"):
            assert roles.MINIMAL_ROLE[(method, path)] == roles.REPLICA  # vDisk bytes
        elif method == "GET" and path != "/tokens":
            assert roles.MINIMAL_ROLE[(method, path)] == roles.READ
    assert roles.needed_role("PUT", "/api/v1/anything", API_PREFIX) == roles.ADMIN  # fail closed


def test_read_reads_but_cannot_promote(as_role, farm, populated):
    """Fails before: there was one all-powerful token and no roles."""
    reader = as_role("read")
    assert reader.get("/api/v1/vdisks").status_code == 200
    assert reader.get("/api/v1/audit").status_code == 200
    farm.versions.new("w")
    with unchanged(farm):
        detail = error_of(
            reader.post("/api/v1/vdisks/w/versions/promote", json={"to": "test"}), 403
        )
        assert detail == (
            "token t-read has role read; POST /vdisks/{name}/versions/promote needs role admin"
        )
        error_of(reader.patch("/api/v1/devices/pc1", json={"description": "x"}), 403)
        error_of(reader.post("/api/v1/locks/w/release"), 403)
        error_of(reader.get("/api/v1/tokens"), 403)


def test_operator_runs_devices_but_cannot_delete_a_vdisk(as_role, farm, populated):
    operator = as_role("operator", "desk")
    assert operator.patch("/api/v1/devices/pc1", json={"description": "lab"}).status_code == 200
    assert operator.post("/api/v1/devices", json={"name": "pc2", "vdisk": "w"}).status_code == 201
    assert operator.post("/api/v1/locks/w/release").status_code == 200
    assert operator.post("/api/v1/rebalance", json={"dry_run": True}).status_code == 200
    with unchanged(farm):
        detail = error_of(operator.delete("/api/v1/vdisks/w"), 403)
        assert detail == "token desk has role operator; DELETE /vdisks/{name} needs role admin"
        for response in (
            operator.post("/api/v1/vdisks/w/versions"),
            operator.post("/api/v1/vdisks/w/versions/merge"),
            operator.post("/api/v1/vdisks/w/export", json={"path": "/tmp/x.raw"}),
            operator.post("/api/v1/vdisks", json={"name": "w9", "source_path": "/etc/passwd"}),
            operator.patch("/api/v1/settings", json={"heartbeat_timeout_s": 9}),
            operator.post("/api/v1/tokens", json={"name": "more", "role": "admin"}),
        ):
            error_of(response, 403)
    actors = {e.actor for e in farm.audit.list() if e.action.startswith("device.")}
    assert "token:desk@192.0.2.7" in actors


def test_admin_can_delete_a_vdisk(as_role, farm, populated):
    admin = as_role("admin", "boss")
    farm.devices.assign("pc1", None)
    assert admin.delete("/api/v1/vdisks/w").status_code == 200
    assert farm.vdisks.list() == []
    assert farm.audit.list(limit=1)[0].actor == "token:boss@192.0.2.7"


def test_a_revoked_token_is_refused(app, farm, populated):
    secret = farm.tokens.add("gone", "admin", actor="test").secret
    client = TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {secret}"})
    assert client.get("/api/v1/devices").status_code == 200
    farm.tokens.revoke("gone", actor="test")
    with unchanged(farm):
        assert error_of(client.get("/api/v1/devices"), 401) == "wrong API token"
        error_of(client.delete("/api/v1/devices/pc1"), 401)


def test_token_routes_for_an_admin(admin, remote, farm):
    made = admin.post("/api/v1/tokens", json={"name": "relay", "role": "operator"})
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert made.json()["token"]["role"] == "operator"
    listed = admin.get("/api/v1/tokens").json()
    assert [t["name"] for t in listed] == ["relay"] and secret not in str(listed)
    assert "secret" not in listed[0] and "secret_sha256" not in listed[0]
    assert admin.post("/api/v1/tokens/relay/revoke").json()["revoked_at"]
    with unchanged(farm):
        assert "invalid token name" in error_of(
            admin.post("/api/v1/tokens", json={"name": "a b", "role": "read"}), 400
        )
        error_of(admin.post("/api/v1/tokens", json={"name": "x", "role": "root"}), 422)
        error_of(admin.post("/api/v1/tokens/nope/revoke"), 404)
        error_of(remote.get("/api/v1/tokens"), 401)


def test_no_route_adds_an_audit_row_without_a_token(app, farm, populated):
    """Every change route refuses a caller without a token before doing
    anything; login records no audit row."""
    anonymous = TestClient(app, client=OTHER_HOST)
    loopback = TestClient(app, client=("127.0.0.1", 40009), base_url="http://127.0.0.1")
    farm.servers.register(10809, 8080)
    before = len(farm.audit.list())
    for method, path in roles.MINIMAL_ROLE:
        url = API_PREFIX + path.replace("{name}", "w").replace("{vdisk}", "w")
        for client in (anonymous, loopback):
            response = client.request(method, url, json={})
            if method == "GET" and client is loopback and path != "/tokens":
                continue
            assert response.status_code == 401, (method, path, response.text)
    assert anonymous.post("/api/v1/login", json={"device": "pc1"}).status_code == 200
    assert len(farm.audit.list()) == before
