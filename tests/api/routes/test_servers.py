"""/api/v1/servers: list the servers, change one's placement settings."""

from __future__ import annotations

import pytest

from tests.api.conftest import OTHER_ACTOR, error_of, unchanged


def test_list_servers(local, farm):
    [server] = local.get("/api/v1/servers").json()
    assert (server["name"], server["uuid"], server["id"]) == (
        farm.server_name,
        farm.server_uuid,
        farm.server_id,
    )
    assert server["store_path"] == str(farm.store.root) and server["nbd_port"] is None
    farm.servers.register(10809, 8080)
    [server] = local.get("/api/v1/servers").json()
    assert (server["nbd_port"], server["api_port"]) == (10809, 8080)
    assert server["last_heartbeat"].startswith("2030-01-01T12:00:00")


def test_change_server(admin, local, farm):
    path = f"/api/v1/servers/{farm.server_name}"
    info = admin.patch(
        path, json={"power_rating": 2.5, "subnet": "10.1.0.0/16", "max_booting": 40}
    ).json()
    assert (info["power_rating"], info["subnet"], info["max_booting"]) == (2.5, "10.1.0.0/16", 40)
    info = admin.patch(path, json={"subnet": None}).json()
    assert (info["power_rating"], info["subnet"]) == (2.5, None)
    assert local.get("/api/v1/servers").json()[0]["max_booting"] == 40
    entry = farm.audit.list(limit=1)[0]
    assert (entry.action, entry.actor) == ("server.set", OTHER_ACTOR)


@pytest.mark.parametrize(
    "name, body, status, says",
    [
        ("{me}", {}, 400, "nothing to change"),
        ("{me}", {"power_rating": 0}, 400, "invalid power rating"),
        ("{me}", {"subnet": "10.1.0.0/33"}, 400, "10.1.0.0/33"),
        ("{me}", {"max_booting": 0}, 400, "invalid max-booting"),
        ("{me}", {"max_booting": "many"}, 422, "body field max_booting"),
        ("nope", {"max_booting": 5}, 404, "no server named nope"),
    ],
)
def test_change_refusals_change_nothing(admin, farm, name, body, status, says):
    with unchanged(farm):
        response = admin.patch(f"/api/v1/servers/{name.format(me=farm.server_name)}", json=body)
        assert says in error_of(response, status)


def test_change_needs_the_token(local, farm):
    with unchanged(farm):
        error_of(local.patch(f"/api/v1/servers/{farm.server_name}", json={"max_booting": 5}), 401)
