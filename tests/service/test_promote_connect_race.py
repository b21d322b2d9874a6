"""Hole 11: a maintenance device connecting while its version is promoted
never writes a sealed version. The race is driven step by step: export
resolution says "writable", the promote seals, then the stream asks for the
lock — refused; and the other orders."""

from __future__ import annotations

import threading

import pytest

from tests.service.helpers import make_raw, new_sealed_version, write_version
from vdfarm.daemon.farm_port import ServiceFarmPort
from vdfarm.service.errors import Conflict
from vdfarm.store import qemu_img
from vdfarm.stream import port


@pytest.fixture
def vfarm(farm, tmp_path):
    """vDisk w with version 1 in production and version 2 open; devices pp
    (production) and pm (maintenance)."""
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw", size=4 << 20))
    farm.devices.add("pp", vdisk="w")
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    new_sealed_version(farm, 0x11)
    farm.versions.new("w")
    write_version(farm, 0x22)
    return farm


def test_resolve_then_promote_then_lock_is_refused(vfarm):
    target = vfarm.exports.resolve("pm")
    assert target.writes_vdisk and target.version == 2
    vfarm.versions.promote("w", "test")  # seals version 2
    with pytest.raises(Conflict, match="version 2 of vDisk w is not open for maintenance"):
        vfarm.locks.acquire(target.vdisk_id, target.device_id, 30)
    assert vfarm.locks.list()[0].state == "free"


def test_through_the_stream_port_even_when_a_new_version_opened_meanwhile(vfarm):
    adapter = ServiceFarmPort(vfarm)
    target = adapter.resolve_export("pm")
    assert target.writes_vdisk and target.version == 2
    vfarm.versions.promote("w", "test")
    vfarm.versions.new("w")  # version 3 is open now; the stream would open version 2's file
    with pytest.raises(port.LockConflict, match="version 2 of vDisk w"):
        adapter.acquire_lock(target.vdisk_id, target.device_id, 30)
    fresh = adapter.resolve_export("pm")  # a reconnect resolves again: version 3, writable
    assert fresh.version == 3
    assert adapter.acquire_lock(fresh.vdisk_id, fresh.device_id, 30).token >= 1


def test_lock_first_then_promote_is_refused(vfarm):
    target = vfarm.exports.resolve("pm")
    vfarm.locks.acquire(target.vdisk_id, target.device_id, 30)
    with pytest.raises(Conflict, match="maintenance device is connected"):
        vfarm.versions.promote("w", "test")
    assert vfarm.versions.list("w")[-1].access == "maintenance"


def test_lock_refused_while_the_seal_runs(vfarm, monkeypatch):
    """Promote has checked the lock and is sealing (qemu-img check held
    back): the device's lock request in that window is refused at once."""
    entered, release = threading.Event(), threading.Event()
    real = qemu_img.check

    def held_check(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(qemu_img, "check", held_check)
    target = vfarm.exports.resolve("pm")
    outcome = {}
    promote = threading.Thread(
        target=lambda: outcome.setdefault("r", vfarm.versions.promote("w", "test")), daemon=True
    )
    promote.start()
    try:
        assert entered.wait(30)
        tried = {}

        def take():
            try:
                tried["grant"] = vfarm.locks.acquire(target.vdisk_id, target.device_id, 30)
            except Conflict as exc:
                tried["refused"] = str(exc)

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        taker.join(5)
        assert not taker.is_alive(), "the lock request waited for the promote's transaction"
        assert "being sealed" in tried.get("refused", ""), tried
    finally:
        release.set()
        promote.join(60)
    assert outcome["r"].version.access == "test"
    with pytest.raises(Conflict, match="not open for maintenance"):
        vfarm.locks.acquire(target.vdisk_id, target.device_id, 30)
