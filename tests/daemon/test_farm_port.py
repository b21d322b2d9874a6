"""The service adapter of the stream's port: records become the port's
dataclasses, service errors the port's error types with the same line. In
one process, on SQLite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.service.helpers import make_raw
from vdfarm.daemon.farm_port import ServiceFarmPort
from vdfarm.service.context import Farm
from vdfarm.service.errors import Unavailable
from vdfarm.stream import port


@pytest.fixture
def farm(tmp_path) -> Iterator[Farm]:
    farm = Farm.init(tmp_path / "d", server_name="s1")
    farm.vdisks.import_image("golden", make_raw(tmp_path / "g.raw"))
    farm.vdisks.import_image("mine", make_raw(tmp_path / "m.raw"), mode="private")
    farm.devices.add("pc1", vdisk="golden", mac="52:54:00:12:34:01")
    farm.devices.add("solo", vdisk="mine")
    farm.devices.add("bare")
    yield farm
    farm.close()


def test_an_export_target_crosses_as_the_ports_dataclass(farm):
    adapter = ServiceFarmPort(farm)
    pc1 = adapter.resolve_export("52:54:00:12:34:01")
    assert isinstance(pc1, port.ExportTarget)
    assert (pc1.device_name, pc1.vdisk_name, pc1.access_mode) == ("pc1", "golden", "standard")
    assert not pc1.writes_vdisk and pc1.chain[-1].is_file() and pc1.chain_formats == ("raw",)
    solo = adapter.resolve_export("solo")
    assert solo.writes_vdisk and solo.access_mode == "private"
    view = adapter.resolve_vdisk_view("golden")
    assert isinstance(view, port.VdiskView) and view.chain == pc1.chain
    assert not pc1.require_tls and not view.require_tls


def test_require_tls_crosses_the_port(farm):
    farm.vdisks.set("golden", require_tls=True)
    adapter = ServiceFarmPort(farm)
    assert adapter.resolve_export("pc1").require_tls
    assert adapter.resolve_vdisk_view("golden").require_tls
    assert not adapter.resolve_export("solo").require_tls


@pytest.mark.parametrize(
    ("call", "error", "line"),
    [
        (lambda p: p.resolve_export("nobody"), port.UnknownExport, "no device named nobody"),
        (
            lambda p: p.resolve_export("bare"),
            port.ExportRefused,
            "device bare has no vDisk assigned",
        ),
        (lambda p: p.resolve_vdisk_view("nothing"), port.UnknownExport, "no vDisk named nothing"),
    ],
)
def test_service_errors_become_the_ports_errors_with_the_same_line(farm, call, error, line):
    with pytest.raises(error) as raised:
        call(ServiceFarmPort(farm))
    assert str(raised.value) == line


def test_another_copy_in_the_store_is_not_in_store_not_the_database_away(farm, tmp_path):
    """Another image imported under the vDisk's name into this store (its
    own manifest and sha256): not the copy the farm sealed. The stream must
    tell it from a database outage (it never serves a cached target then)."""
    adapter = ServiceFarmPort(farm)
    adapter.resolve_export("pc1")
    shutil.rmtree(farm.store.root / "golden")
    farm.store.import_image("golden", make_raw(tmp_path / "other.raw", fill=b"\x33"), "raw")
    with pytest.raises(port.NotInStore) as raised:
        adapter.resolve_export("pc1")
    assert str(raised.value) == "version 0 of vDisk golden is not in this server's store"
    shutil.rmtree(farm.store.root / "golden")
    with pytest.raises(port.NotInStore, match="vDisk golden is not in this server's store"):
        adapter.resolve_export("pc1")


def test_a_lock_held_elsewhere_is_a_lock_conflict_and_a_stale_token_renews_false(farm):
    adapter = ServiceFarmPort(farm)
    solo = adapter.resolve_export("solo")
    pc1 = adapter.resolve_export("pc1")
    grant = adapter.acquire_lock(solo.vdisk_id, solo.device_id, 30)
    assert isinstance(grant, port.LockGrant)
    with pytest.raises(port.LockConflict, match="locked by device solo"):
        adapter.acquire_lock(solo.vdisk_id, pc1.device_id, 30)
    assert adapter.renew_lock(solo.vdisk_id, solo.device_id, grant.token, 30)
    assert not adapter.renew_lock(solo.vdisk_id, solo.device_id, grant.token + 1, 30)
    adapter.release_lock(solo.vdisk_id, solo.device_id, grant.token)


def test_session_records_move_orders_and_reconcile_go_through(farm):
    adapter = ServiceFarmPort(farm)
    pc1 = adapter.resolve_export("pc1")
    adapter.session_started(pc1.device_id, pc1.vdisk_id, pc1.version, "10.0.0.9")
    adapter.report_cache_usage({pc1.device_id: 4096})
    assert adapter.pending_moves() == []
    assert not adapter.cancel_move(pc1.device_id)
    assert adapter.reconcile_sessions({}) == (0, 1)  # nothing served here any more
    live = {pc1.device_id: port.LiveSession(pc1.vdisk_id, pc1.version, "10.0.0.9")}
    assert adapter.reconcile_sessions(live) == (1, 0)
    adapter.session_ended(pc1.device_id)
    assert adapter.reconcile_sessions({}) == (0, 0)


def test_database_away_is_farm_unavailable_with_the_same_line(farm, monkeypatch):
    def away(*_args):
        raise Unavailable("farm database error: connection refused")

    monkeypatch.setattr(farm.exports, "resolve", away)
    monkeypatch.setattr(farm.sessions, "reconcile", away)
    adapter = ServiceFarmPort(farm)
    for call in (lambda: adapter.resolve_export("pc1"), lambda: adapter.reconcile_sessions({})):
        with pytest.raises(port.FarmUnavailable) as raised:
            call()
        assert str(raised.value) == "farm database error: connection refused"
        assert isinstance(raised.value.__cause__, Unavailable)
        assert not isinstance(raised.value, port.NotInStore)  # the cache may stand in
