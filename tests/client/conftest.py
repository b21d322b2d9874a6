"""Client-test fixtures: the API tests' farm and app, and a FarmClient that
reaches the app through a FastAPI TestClient (from another host, with the
token, so reads and changes both count as remote)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api import conftest as api_fixtures
from tests.api.conftest import OTHER_HOST
from vdfarm.client.farm import FarmClient
from vdfarm.client.local import LocalFarm

clock = api_fixtures.clock
farm = api_fixtures.farm
app = api_fixtures.app
token = api_fixtures.token
raw_image = api_fixtures.raw_image
populated = api_fixtures.populated

BASE = "http://testserver"


@pytest.fixture
def client(app, token):
    """The farm through its API, as `vdfarm --farm URL --token T` sees it."""
    with FarmClient(BASE, token, http=TestClient(app, client=OTHER_HOST)) as remote:
        yield remote


@pytest.fixture
def local(farm):
    """The same farm opened here, with the client's interface."""
    return LocalFarm(farm)
