"""API-test fixtures: an initialised farm on a tmp data dir, its app, and
TestClients that come from loopback, from another host, or with the token
(the data directory's api-token, an admin token named local:<server>);
`unchanged(farm)` checks a refused request changed no row and no file."""

from __future__ import annotations

import contextlib
import time

import pytest
from fastapi.testclient import TestClient

from tests.service import conftest as service_fixtures
from tests.service.helpers import dump, make_raw
from vdfarm.api.app import create_app
from vdfarm.api.auth import read_token
from vdfarm.service.identity import default_server_name

LOOPBACK = ("127.0.0.1", 40001)
OTHER_HOST = ("192.0.2.7", 40002)
LOOPBACK_URL = "http://127.0.0.1"  # the Host header an open loopback read needs
# The data directory's api-token is the admin token `local:<server name>`.
LOCAL_TOKEN_NAME = f"local:{default_server_name()}"
OTHER_ACTOR = f"token:{LOCAL_TOKEN_NAME}@192.0.2.7"
LOOPBACK_ACTOR = f"token:{LOCAL_TOKEN_NAME}@127.0.0.1"

# The same farm (and clock) the service tests use.
clock = service_fixtures.clock
farm = service_fixtures.farm


@pytest.fixture
def app(farm, tmp_path):
    """The app; the test's tmp_path is its transfer directory (which holds
    the data directory and the images tests import)."""
    return create_app(farm, transfer_dir=tmp_path)


@pytest.fixture
def token(app, farm):
    return read_token(farm.data_dir)


@pytest.fixture
def admin(app, token):
    """A client on another host that sends the right token."""
    return TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def local(app):
    """A client on loopback without a token (Host: 127.0.0.1)."""
    return TestClient(app, client=LOOPBACK, base_url=LOOPBACK_URL)


@pytest.fixture
def remote(app):
    """A client on another host without a token."""
    return TestClient(app, client=OTHER_HOST)


@pytest.fixture
def raw_image(tmp_path):
    return make_raw(tmp_path / "src.raw")


@pytest.fixture
def populated(farm, raw_image):
    """vDisk w (standard) and device pc1 (aa:bb:cc:00:00:01) that boots it."""
    farm.vdisks.import_image("w", raw_image)
    farm.devices.add("pc1", mac="aa:bb:cc:00:00:01", vdisk="w")
    return farm


@contextlib.contextmanager
def unchanged(farm):
    """Assert the block changes no database row and no data-dir file."""
    before = dump(farm)
    yield
    assert dump(farm) == before


def error_of(response, status):
    """The one-line `detail` of an error answer, after checking its status."""
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail
    return detail


def job_of(client, response, waits=2400):
    """The job RESPONSE (202) started, once it has ended (looked up through
    its `Location` every 50 ms)."""
    assert response.status_code == 202, (response.status_code, response.text)
    job = response.json()
    location = response.headers["location"]
    assert location == f"/api/v1/jobs/{job['id']}"
    for _ in range(waits):
        if job["state"] != "running":
            return job
        time.sleep(0.05)
        answer = client.get(location)
        assert answer.status_code == 200, answer.text
        job = answer.json()
    raise AssertionError(f"the job never ended: {job}")
