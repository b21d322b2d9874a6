"""/api/v1/settings: show and change the farm's settings."""

from __future__ import annotations

import pytest

from tests.api.conftest import OTHER_ACTOR, error_of, unchanged


def test_show_and_change(admin, local, farm):
    assert local.get("/api/v1/settings").json() == {
        "heartbeat_timeout_s": 3.0,
        "boot_phase_s": 60.0,
        "rebalance_trigger_pct": 25.0,
        "audit_days": 365,
        "auto_add_vdisk": None,
        "auto_add_limit": 100,
    }
    assert admin.patch("/api/v1/settings", json={"audit_days": 90}).json()["audit_days"] == 90
    answer = admin.patch("/api/v1/settings", json={"heartbeat_timeout_s": 8}).json()
    assert answer["heartbeat_timeout_s"] == 8.0 and answer["boot_phase_s"] == 60.0
    assert farm.settings.show().heartbeat_timeout_s == 8.0
    entry = farm.audit.list(limit=1)[0]
    assert (entry.action, entry.actor) == ("farm.set", OTHER_ACTOR)


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({}, 400, "nothing to change"),
        ({"heartbeat_timeout_s": 0}, 400, "invalid heartbeat timeout"),
        ({"boot_phase_s": 99999}, 400, "invalid boot phase"),
        ({"rebalance_trigger_pct": "lots"}, 422, "rebalance_trigger_pct"),
        ({"grace": 3}, 422, "grace"),
        ({"audit_days": -5}, 400, "invalid audit retention"),
        ({"audit_days": 1.5}, 422, "audit_days"),
        ({"auto_add_vdisk": "nope"}, 404, "no vDisk named nope"),
        ({"auto_add_vdisk": "a b"}, 400, "invalid vDisk name"),
        ({"auto_add_limit": -1}, 400, "invalid auto-add limit"),
    ],
)
def test_refusals_change_nothing(admin, farm, body, status, says):
    with unchanged(farm):
        assert says in error_of(admin.patch("/api/v1/settings", json=body), status)


def test_change_needs_the_token(local, farm):
    with unchanged(farm):
        error_of(local.patch("/api/v1/settings", json={"boot_phase_s": 5}), 401)


def test_auto_add_is_set_and_cleared(admin, farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    answer = admin.patch("/api/v1/settings", json={"auto_add_vdisk": "w", "auto_add_limit": 5})
    assert (answer.json()["auto_add_vdisk"], answer.json()["auto_add_limit"]) == ("w", 5)
    entry = farm.audit.list(limit=1)[0]
    assert entry.before["auto_add_vdisk"] is None and entry.after["auto_add_vdisk"] == "w"
    assert (
        admin.patch("/api/v1/settings", json={"auto_add_vdisk": ""}).json()["auto_add_vdisk"]
        is None
    )
    assert farm.settings.show().auto_add_limit == 5
