"""vDisk locks: acquire, renew, expiry, steal after expiry, fencing, admin
release — on SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from tests.farm.postgres import fresh_postgres_url
from tests.service.helpers import audit_actions, dump
from tests.service.multi import duo_fixture  # noqa: F401 (fixture)
from vdfarm.service.context import Farm
from vdfarm.service.errors import Conflict, Invalid, NotFound


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    if request.param == "sqlite":
        yield None
    else:
        with fresh_postgres_url() as url:
            yield url


@pytest.fixture
def setup(tmp_path, clock, db_url, raw_image):
    """A farm with vDisk w and devices pc1, pc2 (ids in a small namespace)."""
    farm = Farm.init(tmp_path / "data", db_url, server_name="srv", actor="test:me", clock=clock)
    vdisk = farm.vdisks.import_image("w", raw_image, mode="private")
    pc1 = farm.devices.add("pc1", vdisk="w")
    pc2 = farm.devices.add("pc2", vdisk="w")
    yield farm, vdisk.id, pc1.id, pc2.id
    farm.close()


def test_acquire_free_lock(setup, clock):
    farm, v, pc1, _ = setup
    grant = farm.locks.acquire(v, pc1, 30)
    assert grant.token == 1
    assert grant.expires_at == clock.now + timedelta(seconds=30)
    assert farm.locks.is_current(v, 1)
    [info] = farm.locks.list()
    assert (info.holder, info.server, info.state, info.fencing_token) == ("pc1", "srv", "held", 1)
    assert info.acquired_at == clock.now and info.lease_expires_at == grant.expires_at


def test_held_lock_refuses_another_device(setup, clock):
    farm, v, pc1, pc2 = setup
    grant = farm.locks.acquire(v, pc1, 30)
    with pytest.raises(Conflict) as info:
        farm.locks.acquire(v, pc2, 30)
    assert str(info.value) == (
        f"vDisk w is locked by device pc1 on server srv until {grant.expires_at.isoformat()}"
    )
    assert farm.locks.is_current(v, grant.token)
    assert farm.locks.list()[0].fencing_token == 1


def test_renew_extends_the_lease(setup, clock):
    farm, v, pc1, pc2 = setup
    grant = farm.locks.acquire(v, pc1, 10)
    clock.advance(8)
    assert farm.locks.renew(v, pc1, grant.token, 10) is True
    clock.advance(8)
    with pytest.raises(Conflict):
        farm.locks.acquire(v, pc2, 10)
    assert farm.locks.list()[0].lease_expires_at == clock.now + timedelta(seconds=2)


def test_expiry_then_steal_fences_the_old_holder(setup, clock):
    farm, v, pc1, pc2 = setup
    old = farm.locks.acquire(v, pc1, 10)
    clock.advance(10.001)
    assert farm.locks.list()[0].state == "expired"
    assert farm.locks.is_current(v, old.token)  # nobody took it yet
    new = farm.locks.acquire(v, pc2, 10)
    assert new.token == old.token + 1
    assert not farm.locks.is_current(v, old.token)
    assert farm.locks.is_current(v, new.token)
    assert farm.locks.renew(v, pc1, old.token, 10) is False
    farm.locks.release(v, pc1, old.token)  # stale: changes nothing
    [info] = farm.locks.list()
    assert (info.holder, info.state, info.fencing_token) == ("pc2", "held", new.token)


def test_same_device_reacquire_grows_token(setup):
    farm, v, pc1, _ = setup
    tokens = [farm.locks.acquire(v, pc1, 10).token for _ in range(3)]
    assert tokens == [1, 2, 3]
    assert not farm.locks.is_current(v, 2) and farm.locks.is_current(v, 3)


def test_release_then_token_keeps_growing(setup):
    farm, v, pc1, pc2 = setup
    first = farm.locks.acquire(v, pc1, 10)
    farm.locks.release(v, pc1, first.token)
    [info] = farm.locks.list()
    assert (info.state, info.holder, info.fencing_token) == ("free", None, 1)
    assert not farm.locks.is_current(v, first.token)
    assert farm.locks.renew(v, pc1, first.token, 10) is False
    assert farm.locks.acquire(v, pc2, 10).token == 2


def test_renew_by_wrong_device_or_token(setup):
    farm, v, pc1, pc2 = setup
    grant = farm.locks.acquire(v, pc1, 10)
    assert farm.locks.renew(v, pc2, grant.token, 10) is False
    assert farm.locks.renew(v, pc1, grant.token + 1, 10) is False
    farm.locks.release(v, pc2, grant.token)
    assert farm.locks.is_current(v, grant.token)


def test_bad_arguments(setup):
    farm, v, pc1, _ = setup
    for lease in (0, -1, float("nan"), float("inf"), "10", True):
        with pytest.raises(Invalid):
            farm.locks.acquire(v, pc1, lease)
    with pytest.raises(NotFound, match="no vDisk with id"):
        farm.locks.acquire(9999, pc1, 10)
    with pytest.raises(NotFound, match="no device with id"):
        farm.locks.acquire(v, 9999, 10)
    assert farm.locks.is_current(9999, 1) is False
    assert farm.locks.list()[0].fencing_token == 0


def test_admin_release_fences_and_is_audited(setup):
    farm, v, pc1, pc2 = setup
    grant = farm.locks.acquire(v, pc1, 60)
    before = farm.locks.release_by_admin("w", actor="cli:admin")
    assert (before.state, before.holder) == ("held", "pc1")
    assert not farm.locks.is_current(v, grant.token)
    assert farm.locks.renew(v, pc1, grant.token, 60) is False
    entry = farm.audit.list()[-1]
    assert (entry.action, entry.actor, entry.target_name) == ("lock.release", "cli:admin", "w")
    assert entry.before["holder"] == "pc1" and entry.after["state"] == "free"
    assert farm.locks.acquire(v, pc2, 60).token == grant.token + 1


def test_admin_release_of_free_lock_and_unknown_vdisk(setup):
    farm, _, _, _ = setup
    actions = audit_actions(farm)
    assert farm.locks.release_by_admin("w").state == "free"
    assert audit_actions(farm) == actions
    with pytest.raises(NotFound, match="no vDisk named nope"):
        farm.locks.release_by_admin("nope")


def test_racing_acquires_have_exactly_one_winner(setup, tmp_path, db_url, raw_image):
    farm, v, _, _ = setup
    device_ids = [farm.devices.add(f"r{i}", vdisk="w").id for i in range(6)]
    farms = [Farm.open(tmp_path / "data", db_url) for _ in device_ids]
    barrier = threading.Barrier(len(device_ids))
    outcomes: list[object] = [None] * len(device_ids)

    def contend(i):
        barrier.wait()
        try:
            outcomes[i] = farms[i].locks.acquire(v, device_ids[i], 60)
        except Conflict as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(device_ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in farms:
        f.close()
    winners = [o for o in outcomes if not isinstance(o, Conflict)]
    assert len(winners) == 1, outcomes
    assert winners[0].token == 1
    assert farm.locks.list()[0].fencing_token == 1


def test_the_same_device_on_another_server_waits_for_the_lease(duo, clock):
    a, b = duo["a"], duo["b"]
    a.devices.add("solo", vdisk="w")
    target = a.exports.resolve("solo")
    grant = a.locks.acquire(target.vdisk_id, target.device_id, 30)
    with pytest.raises(Conflict, match="locked by device solo on server a"):
        b.locks.acquire(target.vdisk_id, target.device_id, 30)
    assert a.locks.acquire(target.vdisk_id, target.device_id, 30).token == grant.token + 1
    clock.advance(31)  # a went quiet: its lease ran out, the lock is free...
    assert [i.state for i in b.locks.list()] == ["expired"]
    # ... but a's copy holds the writes: b may not take it on its own.
    before = dump(a)
    with pytest.raises(Conflict, match="written on server a .down.*vdfarm lock home w b"):
        b.locks.acquire(target.vdisk_id, target.device_id, 30)
    assert dump(a) == before
    moved = b.locks.move_home("w", "b")  # the admin accepts b's copy
    assert (moved.home, moved.state) == ("b", "expired")
    assert audit_actions(a)[-1] == "lock.home"
    taken = b.locks.acquire(target.vdisk_id, target.device_id, 30)
    assert taken.token == grant.token + 2
    assert a.locks.renew(target.vdisk_id, target.device_id, grant.token + 1, 30) is False
    clock.advance(31)
    with pytest.raises(Conflict, match="written on server b"):
        a.locks.acquire(target.vdisk_id, target.device_id, 30)  # the old home came back


def test_moving_the_home_refusals(duo, clock):
    a, b = duo["a"], duo["b"]
    a.devices.add("solo", vdisk="w")
    target = a.exports.resolve("solo")
    a.locks.acquire(target.vdisk_id, target.device_id, 30)
    before = dump(a)
    with pytest.raises(Conflict, match="locked by device solo on server a.*release it first"):
        b.locks.move_home("w", "b")
    with pytest.raises(NotFound, match="no server named zz"):
        b.locks.move_home("w", "zz")
    with pytest.raises(NotFound, match="no vDisk named nope"):
        b.locks.move_home("nope", "b")
    assert dump(a) == before
    assert a.locks.move_home("w", "a").home == "a"  # the holder's own server: allowed
