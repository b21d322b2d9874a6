"""POST /api/v1/login through the real app: no token needed, the answer's
shape, the caller's address for subnet affinity (`client_ip` believed only
from an operator or admin token), 404/400/503/422 errors, the rate limit
and the reservation cap per source address."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_HOST
from tests.service.helpers import make_raw
from vdfarm.api.app import create_app
from vdfarm.api.deps import get_farm
from vdfarm.api.limits import ApiLimits
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


def test_caller_address_decides_fixed_affinity(served, remote, admin):
    set_subnet_affinity(served, "w", "fixed")
    served.servers.configure(served.server_name, subnet="192.0.2.0/24")  # remote's subnet
    assert remote.post(URL, json={"device": "pc1"}).status_code == 200
    answer = admin.post(URL, json={"device": "pc1", "client_ip": "10.9.9.9"})
    assert answer.status_code == 503 and "fixed subnet affinity" in answer.json()["detail"]


def test_client_ip_is_ignored_without_a_token_and_believed_with_one(app, served, remote):
    """Fails before: any caller's `client_ip` was believed."""
    set_subnet_affinity(served, "w", "fixed")
    served.servers.configure(served.server_name, subnet="10.9.0.0/16")  # not remote's
    spoofed = remote.post(URL, json={"device": "pc1", "client_ip": "10.9.9.9"})
    assert spoofed.status_code == 503, spoofed.text  # the peer 192.0.2.7 decided
    reader = served.tokens.add("watcher", "read", actor="test").secret
    as_reader = TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {reader}"})
    assert as_reader.post(URL, json={"device": "pc1", "client_ip": "10.9.9.9"}).status_code == 503
    relay = served.tokens.add("relay", "operator", actor="test").secret
    as_relay = TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {relay}"})
    answer = as_relay.post(URL, json={"device": "pc1", "client_ip": "10.9.9.9"})
    assert answer.status_code == 200, answer.text


def test_a_wrong_token_is_refused_even_here(app, served):
    client = TestClient(app, client=OTHER_HOST, headers={"Authorization": "Bearer nope"})
    answer = client.post(URL, json={"device": "pc1", "client_ip": "10.9.9.9"})
    assert answer.status_code == 401 and answer.json()["detail"] == "wrong API token"


def test_logins_are_rate_limited_per_source(farm, served, tmp_path):
    """Fails before: login had no limit."""
    app = create_app(farm, limits=ApiLimits(login_rate_per_s=1.0, login_burst=3))
    one = TestClient(app, client=OTHER_HOST)
    other = TestClient(app, client=("192.0.2.8", 40003))
    answers = [one.post(URL, json={"device": "pc1", "reserve": False}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    detail = answers[-1].json()["detail"]
    assert detail.startswith("too many logins from 192.0.2.7: at most 1 a second (burst 3)")
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert other.post(URL, json={"device": "pc1", "reserve": False}).status_code == 200
    # refused before the body is read: even a malformed one is a 429
    assert (
        one.post(URL, content=b"{nope", headers={"Content-Type": "application/json"}).status_code
        == 429
    )


def test_reservations_are_capped_per_source_without_a_token(farm, served, admin, tmp_path):
    """Fails before: one caller could reserve for every device (max-booting used up)."""
    for n in range(2, 5):
        farm.devices.add(f"pc{n}", vdisk="w")
    app = create_app(farm, limits=ApiLimits(reservations_per_source=2))
    anonymous = TestClient(app, client=OTHER_HOST)
    assert anonymous.post(URL, json={"device": "pc1"}).status_code == 200
    assert anonymous.post(URL, json={"device": "pc2"}).status_code == 200
    assert anonymous.post(URL, json={"device": "pc1"}).status_code == 200  # the same again
    refused = anonymous.post(URL, json={"device": "pc3"})
    assert refused.status_code == 429, refused.text
    assert "too many reservations from 192.0.2.7: at most 2 devices" in refused.json()["detail"]
    assert anonymous.post(URL, json={"device": "pc3", "reserve": False}).status_code == 200
    assert reserved_devices(farm) == {"pc1", "pc2"}
    other = TestClient(app, client=("192.0.2.8", 40003))
    assert other.post(URL, json={"device": "pc3"}).status_code == 200
    relay = farm.tokens.add("relay", "operator", actor="test").secret
    trusted = TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {relay}"})
    assert trusted.post(URL, json={"device": "pc4"}).status_code == 200
    assert reserved_devices(farm) == {"pc1", "pc2", "pc3", "pc4"}


def reserved_devices(farm):
    from sqlalchemy import select

    from vdfarm.farm.models import Device, LoginReservation

    with farm.session() as session:
        query = select(Device.name).join(LoginReservation, LoginReservation.device_id == Device.id)
        return set(session.scalars(query))


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"device": "nobody"}, 404, "no device named nobody"),
        ({"device": "bare"}, 400, "device bare has no vDisk assigned"),
        ({}, 422, "device"),
        ({"device": "pc1", "extra": 1}, 422, "extra"),
        ({"device": "pc1", "version": 7}, 404, "vDisk w has no version 7 any more"),
        ({"device": "pc1", "version": "0"}, 422, "version"),
        ({"device": "pc1", "version": -1}, 422, "version"),
        ({"device": "pc1", "version": True}, 422, "version"),
    ],
)
def test_errors(served, remote, body, status, text):
    answer = remote.post(URL, json=body)
    assert answer.status_code == status, answer.text
    assert text in answer.json()["detail"]


def test_a_bad_client_ip_from_a_relay_is_400(served, admin):
    answer = admin.post(URL, json={"device": "pc1", "client_ip": "bogus"})
    assert answer.status_code == 400 and "invalid client address" in answer.json()["detail"]


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


def test_the_answer_names_the_copy_and_whether_the_device_may_fail_over(served, remote):
    body = remote.post(URL, json={"device": "pc1", "reserve": False}).json()
    assert body["sha256"] == served.versions.list("w")[0].sha256
    assert body["size"] == served.vdisks.show("w").size
    assert (body["write_cache_type"], body["failover"]) == ("server-disk", False)
    served.vdisks.set("w", write_cache="device-disk")
    body = remote.post(URL, json={"device": "pc1", "reserve": False}).json()
    assert (body["write_cache_type"], body["failover"]) == ("device-disk", True)


def test_excluding_the_only_holder_is_503_and_bad_exclusions_are_refused(served, remote):
    answer = remote.post(URL, json={"device": "pc1", "exclude": [served.server_name]})
    assert answer.status_code == 503 and "excluded by the device" in answer.json()["detail"]
    many = remote.post(URL, json={"device": "pc1", "exclude": [f"s{n}" for n in range(17)]})
    assert many.status_code == 422
    bad = remote.post(URL, json={"device": "pc1", "exclude": ["a/b"]})
    assert bad.status_code == 400 and "invalid server name" in bad.json()["detail"]


def test_a_failover_login_names_the_version_the_device_keeps(served, remote):
    answer = remote.post(URL, json={"device": "pc1", "exclude": [], "version": 0})
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 0
