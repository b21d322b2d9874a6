"""The app: its OpenAPI document, its token, its routes under /api/v1."""

from __future__ import annotations

import stat

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_HOST, unchanged
from vdfarm.api import auth
from vdfarm.api.app import create_app

EXPECTED_PATHS = {
    "/api/v1/servers": {"get"},
    "/api/v1/servers/{name}": {"patch"},
    "/api/v1/vdisks": {"get", "post"},
    "/api/v1/vdisks/{name}": {"get", "patch", "delete"},
    "/api/v1/vdisks/{name}/verify": {"post"},
    "/api/v1/vdisks/{name}/export": {"post"},
    "/api/v1/vdisks/{name}/versions": {"get", "post"},
    "/api/v1/vdisks/{name}/versions/promote": {"post"},
    "/api/v1/vdisks/{name}/versions/revert": {"post"},
    "/api/v1/vdisks/{name}/versions/override": {"post"},
    "/api/v1/vdisks/{name}/versions/merge": {"post"},
    "/api/v1/vdisks/{name}/versions/newest": {"delete"},
    "/api/v1/devices": {"get", "post"},
    "/api/v1/devices/{name}": {"get", "patch", "delete"},
    "/api/v1/locks": {"get"},
    "/api/v1/locks/{vdisk}/release": {"post"},
    "/api/v1/audit": {"get"},
    "/api/v1/jobs": {"get"},
    "/api/v1/jobs/{job_id}": {"get"},
    "/api/v1/login": {"post"},
}


def test_openapi_document_has_every_route(remote):
    response = remote.get("/openapi.json")  # no token needed, even from another host
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    for path, methods in EXPECTED_PATHS.items():
        assert methods <= set(doc["paths"].get(path, {})), path
    assert doc["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"
    post = doc["paths"]["/api/v1/vdisks"]["post"]
    assert {"401", "404", "409", "422", "503"} <= set(post["responses"])
    schema = doc["components"]["schemas"]["VdiskImport"]
    assert set(schema["required"]) == {"name", "source_path"}
    assert schema["properties"]["mode"]["enum"] == ["standard", "private"]


def test_docs_page_is_served(remote):
    response = remote.get("/docs")
    assert response.status_code == 200 and "openapi.json" in response.text


def test_login_is_open_to_devices(remote, farm):
    with unchanged(farm):
        response = remote.post("/api/v1/login", json={"device": "nope"})
    assert response.status_code == 404 and "nope" in response.json()["detail"]


def test_unknown_route_is_404(local):
    assert local.get("/api/v1/nothing").status_code == 404


def test_token_is_made_at_first_start(farm):
    path = farm.data_dir / "api-token"
    assert not path.exists()  # `vdfarm init` does not make it (yet)
    app = create_app(farm)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert app.state.api_token == auth.read_token(farm.data_dir)
    assert create_app(farm).state.api_token == app.state.api_token


def test_given_token_overrides_the_file(farm):
    app = create_app(farm, token="given")
    assert not (farm.data_dir / "api-token").exists()
    client = TestClient(app, client=OTHER_HOST, headers={"Authorization": "Bearer given"})
    assert client.get("/api/v1/servers").status_code == 200


def test_unusable_token_file_stops_the_app(farm):
    (farm.data_dir / "api-token").write_text("")
    with pytest.raises(auth.TokenFileError):
        create_app(farm)
