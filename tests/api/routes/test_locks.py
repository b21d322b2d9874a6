"""/api/v1/locks: list, release by hand (audited as the API client), and a
held lock keeping its device and vDisk from deletion."""

from __future__ import annotations

from tests.api.conftest import OTHER_ACTOR, error_of, unchanged


def hold(farm, vdisk="w", device="pc1"):
    target = farm.exports.resolve(device)
    return farm.locks.acquire(target.vdisk_id, target.device_id, 30)


def test_list_and_release(admin, local, farm, populated):
    [lock] = local.get("/api/v1/locks").json()
    assert (lock["vdisk"], lock["state"], lock["holder"]) == ("w", "free", None)
    grant = hold(farm)
    [lock] = local.get("/api/v1/locks").json()
    assert (lock["state"], lock["holder"], lock["server"], lock["fencing_token"]) == (
        "held",
        "pc1",
        farm.server_name,
        grant.token,
    )
    response = admin.post("/api/v1/locks/w/release")
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["holder"]) == ("held", "pc1")
    assert local.get("/api/v1/locks").json()[0]["state"] == "free"
    assert not farm.locks.is_current(farm.vdisks.show("w").id, grant.token)
    entry = farm.audit.list(limit=1)[0]
    assert (entry.action, entry.actor, entry.target_name) == ("lock.release", OTHER_ACTOR, "w")


def test_release_of_a_free_lock_changes_nothing(admin, farm, populated):
    with unchanged(farm):
        assert admin.post("/api/v1/locks/w/release").json()["state"] == "free"


def test_release_unknown_is_404(admin, farm, populated):
    with unchanged(farm):
        assert error_of(admin.post("/api/v1/locks/nope/release"), 404) == "no vDisk named nope"


def test_held_lock_blocks_deleting_its_device_and_mode_change(admin, farm, populated):
    hold(farm)
    with unchanged(farm):
        assert "holds the lock of vDisk w" in error_of(admin.delete("/api/v1/devices/pc1"), 409)
        assert "cannot change the mode now" in error_of(
            admin.patch("/api/v1/vdisks/w", json={"mode": "private"}), 409
        )


def test_move_the_home(admin, local, farm, populated):
    hold(farm)
    assert local.get("/api/v1/locks").json()[0]["home"] == farm.server_name
    with unchanged(farm):
        assert "no server named zz" in error_of(
            admin.post("/api/v1/locks/w/home", json={"server": "zz"}), 404
        )
        error_of(admin.post("/api/v1/locks/w/home", json={}), 422)
        error_of(local.post("/api/v1/locks/w/home", json={"server": farm.server_name}), 401)
    answer = admin.post("/api/v1/locks/w/home", json={"server": farm.server_name})
    assert answer.status_code == 200 and answer.json()["home"] == farm.server_name
    entry = farm.audit.list(limit=1)[0]
    assert (entry.action, entry.actor) == ("lock.home", OTHER_ACTOR)
