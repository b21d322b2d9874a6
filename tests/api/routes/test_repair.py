"""POST /api/v1/vdisks/{name}/repair: admin only; completes a merge the
database failure cut short, answers what it did, refuses what is not there."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from tests.api.conftest import OTHER_HOST, error_of, unchanged
from tests.service.helpers import new_sealed_version
from vdfarm.service import merges as merges_module
from vdfarm.service.errors import Unavailable


def db_failure(*_args, **_kwargs):
    raise OperationalError("COMMIT", {}, Exception("disk I/O error"))


def test_repair_completes_a_cut_merge(admin, farm, populated, monkeypatch):
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    for pattern in (0x11, 0x22):
        new_sealed_version(farm, pattern)
    with monkeypatch.context() as patch:
        patch.setattr(merges_module, "apply_merge", db_failure)
        with pytest.raises(Unavailable):
            farm.versions.merge("w")
    detail = error_of(admin.post("/api/v1/vdisks/w/versions/merge", json={}), 409)
    assert "vdfarm vdisk repair w" in detail  # refused at once: no job
    response = admin.post("/api/v1/vdisks/w/repair")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "vdisk": "w",
        "step": "merge",
        "outcome": "completed",
        "notes": [],
    }
    assert farm.vdisks.verify("w").ok
    assert admin.post("/api/v1/vdisks/w/repair").json()["outcome"] == "nothing to repair"


def test_repair_needs_admin_and_an_existing_vdisk(app, admin, farm, populated):
    secret = farm.tokens.add("desk", "operator", actor="test").secret
    operator = TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {secret}"})
    assert operator.get("/api/v1/vdisks").status_code == 200  # its first use is recorded
    admin.get("/api/v1/vdisks")
    with unchanged(farm):
        detail = error_of(operator.post("/api/v1/vdisks/w/repair"), 403)
        assert detail.endswith("POST /vdisks/{name}/repair needs role admin")
        assert error_of(admin.post("/api/v1/vdisks/nope/repair"), 404) == "no vDisk named nope"
