"""Service-test fixtures: an initialised farm on a tmp data dir with a clock
the test moves by hand, and a small raw image."""

from __future__ import annotations

import pytest

from tests.service.helpers import FakeClock, make_raw
from vdfarm.service.context import Farm


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def farm(tmp_path, clock):
    farm = Farm.init(tmp_path / "data", actor="test:me", clock=clock)
    yield farm
    farm.close()


@pytest.fixture
def raw_image(tmp_path):
    return make_raw(tmp_path / "src.raw")
