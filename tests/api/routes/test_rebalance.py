"""POST /api/v1/rebalance: plan (dry run) or order the moves, through the real app."""

from __future__ import annotations

import pytest

from tests.api.conftest import OTHER_ACTOR, error_of, unchanged
from tests.service.multi import add_devices, beat, copy_vdisk, vdisk_id
from vdfarm.service.context import Farm

URL = "/api/v1/rebalance"


@pytest.fixture
def make_farm(farm, tmp_path, clock, raw_image):
    """make_farm(DEVICES): this server and server b on one database, vDisk w
    on both, DEVICES devices connected (and booted) to this server; both up."""

    def make(devices: int) -> Farm:
        farm.vdisks.import_image("w", raw_image)
        with Farm.init(
            tmp_path / "b", farm.db_url, server_name="b", actor="test:me", clock=clock
        ) as other:
            copy_vdisk(farm, other)
            for device_id in add_devices(farm, devices):
                farm.sessions.started(device_id, vdisk_id(farm), 0)
            clock.advance(600)  # every device has booted
            beat(farm, other)
        return farm

    return make


@pytest.fixture
def unbalanced(make_farm):
    return make_farm(12)


def test_dry_run_changes_nothing(admin, unbalanced):
    with unchanged(unbalanced):
        response = admin.post(URL, json={"dry_run": True})
        assert response.status_code == 200, response.text
    result = response.json()
    assert (result["applied"], result["auto"], result["trigger_pct"]) == (False, False, 25.0)
    assert len(result["moves"]) == 5 and {m["to_server"] for m in result["moves"]} == {"b"}
    assert result["average"] == 6.0 and result["skipped"] is None


def test_apply_orders_and_audits(admin, unbalanced):
    result = admin.post(URL, json={"trigger_pct": 10}).json()
    assert result["applied"] is True and len(result["moves"]) == 6
    moved = [e for e in unbalanced.audit.list() if e.action == "device.move"]
    assert len(moved) == 6 and {e.actor for e in moved} == {OTHER_ACTOR}
    assert admin.post(URL).json()["moves"] == []  # no body: the defaults


def test_auto_guard(admin, make_farm):
    make_farm(3)
    result = admin.post(URL, json={"auto": True}).json()
    assert (result["auto"], result["moves"]) == (True, [])
    assert "fewer than 5" in result["skipped"]


@pytest.mark.parametrize(
    "body, says",
    [
        ({"trigger_pct": -1}, "body field trigger_pct"),
        ({"trigger_pct": 5000}, "body field trigger_pct"),
        ({"dry_run": "maybe"}, "body field dry_run"),
        ({"apply": True}, "body field apply"),
    ],
)
def test_refusals_change_nothing(admin, unbalanced, body, says):
    with unchanged(unbalanced):
        assert says in error_of(admin.post(URL, json=body), 422)


def test_needs_the_token_even_for_a_dry_run(local, unbalanced):
    with unchanged(unbalanced):
        error_of(local.post(URL, json={"dry_run": True}), 401)
