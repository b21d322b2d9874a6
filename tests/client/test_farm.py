"""FarmClient through the real app: each call answers what the same call on
the local farm answers (the same records), changes are the API actor's, and
every refusal is the service's error with the service's line."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_ACTOR, OTHER_HOST, unchanged
from vdfarm.client.farm import FarmClient
from vdfarm.client.http import TokenRefused
from vdfarm.service.errors import Conflict, Invalid, NotFound, Unavailable
from vdfarm.service.validation import UNCHANGED


def last_actor(farm):
    return farm.audit.list(limit=1)[0].actor


def test_reads_answer_the_local_records(client, local, populated, clock):
    resolve = populated.exports.resolve("pc1")
    populated.sessions.started(resolve.device_id, resolve.vdisk_id, 0)  # pc1 is connected
    populated.versions.new("w")
    populated.servers.record_inventory()
    clock.advance(1)
    for call in (
        lambda f: f.vdisks.list(),
        lambda f: f.vdisks.show("w"),
        lambda f: f.devices.list(),
        lambda f: f.devices.show("pc1"),
        lambda f: f.devices.show("aa:bb:cc:00:00:01"),
        lambda f: f.versions.list("w"),
        lambda f: f.locks.list(),
        lambda f: f.audit.list(),
        lambda f: f.audit.list(limit=2),
        lambda f: f.audit.list(since=clock() - timedelta(seconds=1)),
        lambda f: f.servers.list(),
        lambda f: f.servers.inventory(),
        lambda f: f.vdisks.verify("w"),
        lambda f: f.settings.show(),
    ):
        assert call(client) == call(local)
    assert client.devices.show("pc1").session["connected_at"] == clock() - timedelta(seconds=1)


def test_vdisk_changes(client, farm, raw_image, tmp_path):
    info = client.vdisks.import_image(
        "w", raw_image, mode="private", cache_limit_mb=8, description="golden"
    )
    assert info == farm.vdisks.show("w") and info.access_mode == "private"
    assert last_actor(farm) == OTHER_ACTOR
    assert client.vdisks.set("w", description="new").description == "new"
    assert client.vdisks.set("w", cache_limit_mb=None).write_cache_limit_mb is None
    assert client.vdisks.set("w", mode="standard").access_mode == "standard"
    assert client.vdisks.set("w", require_tls=True) == farm.vdisks.show("w")
    assert farm.vdisks.show("w").require_tls and last_actor(farm) == OTHER_ACTOR
    assert client.vdisks.set("w", require_tls=False).require_tls is False
    assert client.set_subnet_affinity("w", "best-effort") == farm.vdisks.show("w")
    assert farm.audit.list(limit=1)[0].after == {"subnet_affinity": "best-effort"}
    out = tmp_path / "out.qcow2"
    exported = client.versions.export("w", out, "qcow2")
    assert (exported.path, exported.version, out.exists()) == (out, 0, True)
    assert client.vdisks.delete("w").name == "w" and farm.vdisks.list() == []


def test_version_changes(client, populated):
    assert client.versions.new("w").number == 1
    promoted = client.versions.promote("w", "test")
    assert promoted.version.access == "test" and promoted.merged is None
    assert client.versions.revert("w").access == "maintenance"
    assert client.versions.delete("w").number == 1
    assert client.versions.override("w", 0).version == 0
    assert client.versions.override("w", None).version is None
    assert [v.number for v in client.versions.list("w")] == [0]
    for _ in range(2):
        client.versions.new("w")
        client.versions.promote("w", "production")
    merged = client.versions.merge("w")
    assert (merged.kept, merged.removed, merged.new_base) == (2, (1,), False)
    assert [v.number for v in client.versions.list("w")] == [0, 2]
    assert last_actor(populated) == OTHER_ACTOR


def test_device_changes(client, populated):
    added = client.devices.add("pc2", mac="aa-bb-cc-00-00-02", vdisk="w", device_type="test")
    assert added == populated.devices.list()[1] and added.mac == "aa:bb:cc:00:00:02"
    assert client.devices.assign("pc2", None).vdisk is None
    assert client.devices.set("pc2", description="lab").description == "lab"
    assert client.devices.set("pc2", mac=None).mac is None
    assert (
        client.devices.set("pc2", mac=UNCHANGED, device_type="production").device_type
        == "production"
    )
    assert client.devices.delete("pc2").name == "pc2"
    assert last_actor(populated) == OTHER_ACTOR


def test_server_lock_rebalance_login(client, local, populated):
    name = populated.server_name
    info = client.servers.configure(name, power_rating=2, subnet="10.0.0.0/8", max_booting=9)
    assert (info.power_rating, info.subnet, info.max_booting) == (2.0, "10.0.0.0/8", 9)
    assert client.servers.configure(name, subnet=None).subnet is None
    assert client.locks.release_by_admin("w").state == "free"
    assert client.locks.move_home("w", name).home == name == local.locks.list()[0].home
    result = client.rebalance(apply=False, trigger_pct=10)
    assert (result.applied, result.trigger_pct, result.moves) == (False, 10.0, ())
    changed = client.settings.change(rebalance_trigger_pct=40)
    assert changed == local.settings.show() and changed.rebalance_trigger_pct == 40
    assert client.rebalance(apply=False).trigger_pct == 40.0  # the farm's setting
    populated.servers.register(10809, 8080)
    answer = client.login("pc1")
    assert answer.server.name == name and answer.server.nbd_port == 10809
    assert answer == local.login("pc1")
    client.servers.configure(name, subnet="10.0.0.0/8")
    client.set_subnet_affinity("w", "fixed")
    assert client.login("pc1", "10.1.2.3") == local.login("pc1", "10.1.2.3")
    # No address given: none is used (not the admin's own), as locally.
    for farm in (client, local):
        with pytest.raises(Unavailable, match="fixed"):
            farm.login("pc1")


@pytest.mark.parametrize(
    "call, kind, says",
    [
        (lambda c: c.vdisks.show("nope"), NotFound, "no vDisk named nope"),
        (lambda c: c.devices.add("pc1"), Conflict, "pc1"),
        (lambda c: c.devices.add("bad name!"), Invalid, "bad name!"),
        (lambda c: c.vdisks.set("w", mode="shared"), Invalid, "body field mode"),
        (
            lambda c: c.vdisks.import_image("w2", "relative.raw"),
            Invalid,
            "relative.raw does not exist in the transfer directory",
        ),
        (lambda c: c.versions.export("w", "/etc/x", "qcow2"), Invalid, "outside the transfer"),
        (lambda c: c.versions.export("w", "../x", "qcow2"), Invalid, "'..' is not allowed"),
        (lambda c: c.servers.configure("x", max_booting=0), Invalid, "invalid max-booting"),
        (lambda c: c.rebalance(apply=True, trigger_pct=-1), Invalid, "trigger_pct"),
        (lambda c: c.login("ghost"), NotFound, "ghost"),
        (lambda c: c.settings.change(boot_phase_s=-1), Invalid, "invalid boot phase"),
        (lambda c: c.locks.move_home("w", "zz"), NotFound, "no server named zz"),
        (lambda c: c.versions.merge("w"), Invalid, "nothing to merge"),
        (lambda c: c.devices.delete("ghost"), NotFound, "ghost"),
    ],
)
def test_refusals_are_service_errors_and_change_nothing(client, populated, call, kind, says):
    with unchanged(populated), pytest.raises(kind) as caught:
        call(client)
    assert says in caught.value.message and "\n" not in caught.value.message


def test_wrong_or_missing_token(app, populated):
    for token, says in (("wrong", "refused the API token"), (None, "needs the API token")):
        client = FarmClient("http://testserver", token, http=TestClient(app, client=OTHER_HOST))
        with unchanged(populated), pytest.raises(TokenRefused, match=says):
            client.devices.delete("pc1")


def test_a_failover_report_through_the_api_reads_back_as_locally(client, local, populated):
    report = client.failovers.report(
        "pc1", from_server="s1", to_server="s2", pause_ms=250, retried=1, reason="reset"
    )
    assert (report.device, report.from_server, report.to_server) == ("pc1", "s1", "s2")
    local.failovers.report("pc1", from_server="s2", to_server="s1", pause_ms=90, retried=0)
    shown = client.devices.show("pc1")
    assert shown == local.devices.show("pc1")
    assert shown.failovers["count"] == 2 and shown.failovers["last"]["pause_ms"] == 90
    with pytest.raises(NotFound, match="no device named nobody"):
        client.failovers.report("nobody", from_server="a", to_server="b", pause_ms=0, retried=0)


def test_boot_files_through_the_api_read_back_as_locally(client, local, populated, tmp_path):
    (tmp_path / "vmlinuz").write_bytes(b"kernel" * 1000)
    (tmp_path / "initrd").write_bytes(b"initrd" * 1000)
    given = client.boot.attach("w", kernel="vmlinuz", initrd=tmp_path / "initrd", cmdline="ro")
    assert given == local.versions.show("w", 0) == client.versions.show("w", 0)
    assert given.boot.cmdline == "ro" and given.boot.initrd.size == 6000
    assert last_actor(populated) == OTHER_ACTOR
    assert client.boot.attach("w", clear=True).boot is None
    with pytest.raises(NotFound, match="vDisk w has no version 3"):
        client.versions.show("w", 3)
