"""POST /api/v1/login through the real app: no token needed, the answer's
shape, the caller's address for subnet affinity, 404/400/503/422 errors."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.service.helpers import make_raw
from vdfarm.api.deps import get_farm
from vdfarm.api.routes.login import router
from vdfarm.service.login import set_subnet_affinity

URL = "/api/v1/login"


@pytest.fixture
def served(farm, tmp_path):
    """The farm with vDisk w, device pc1 on it, and this server up."""
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw"))
    farm.devices.add("pc1", mac="52:54:00:00:00:01", vdisk="w")
    farm.devices.add("bare")
    farm.servers.register(10809, 8080)
    return farm


def test_login_needs_no_token(served, remote):
    answer = remote.post(URL, json={"device": "pc1"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["device"], body["vdisk"], body["version"]) == ("pc1", "w", 0)
    assert body["server"]["name"] == served.server_name
    assert (body["server"]["nbd_port"], body["server"]["api_port"]) == (10809, 8080)
    assert body["server"]["host"] and body["alternatives"] == []
    assert remote.post(URL, json={"device": "52-54-00-00-00-01"}).json()["device"] == "pc1"


def test_caller_address_decides_fixed_affinity(served, remote):
    set_subnet_affinity(served, "w", "fixed")
    served.servers.configure(served.server_name, subnet="192.0.2.0/24")  # remote's subnet
    assert remote.post(URL, json={"device": "pc1"}).status_code == 200
    answer = remote.post(URL, json={"device": "pc1", "client_ip": "10.9.9.9"})
    assert answer.status_code == 503 and "fixed subnet affinity" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"device": "nobody"}, 404, "no device named nobody"),
        ({"device": "bare"}, 400, "device bare has no vDisk assigned"),
        ({"device": "pc1", "client_ip": "bogus"}, 400, "invalid client address"),
        ({}, 422, "device"),
        ({"device": "pc1", "extra": 1}, 422, "extra"),
    ],
)
def test_errors(served, remote, body, status, text):
    answer = remote.post(URL, json=body)
    assert answer.status_code == status, answer.text
    assert text in answer.json()["detail"]


def test_nothing_up_is_503(served, remote, clock):
    clock.advance(10)
    answer = remote.post(URL, json={"device": "pc1"})
    assert answer.status_code == 503
    assert answer.json() == {"detail": "no server is up"}


def test_router_alone_with_an_overridden_farm(served):
    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    app.dependency_overrides[get_farm] = lambda: served
    answer = TestClient(app).post(URL, json={"device": "pc1"})
    assert answer.status_code == 200 and answer.json()["version"] == 0


def test_a_login_reserves_its_server_unless_asked_not_to(served, remote):
    from sqlalchemy import select

    from vdfarm.farm.models import LoginReservation

    def reserved():
        with served.session() as session:
            return session.scalars(select(LoginReservation.server_id)).all()

    assert remote.post(URL, json={"device": "pc1", "reserve": False}).status_code == 200
    assert reserved() == []
    assert remote.post(URL, json={"device": "pc1"}).status_code == 200
    assert reserved() == [served.server_id]
