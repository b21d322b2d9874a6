"""Login: the server a device should stream from, on a farm of two servers
sharing SQLite or PostgreSQL — load, power, liveness, verified copies,
affinity, max-booting, pending rebalance moves, and the errors a person
sees."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from sqlalchemy import delete, select

from tests.service.helpers import dump_db, make_raw
from tests.service.multi import (
    add_devices,
    beat,
    copy_vdisk,
    duo_fixture,  # noqa: F401  (the fixture)
    vdisk_id,
)
from vdfarm.farm.models import Device, LoginReservation, Server
from vdfarm.service.errors import Invalid, NotFound, Unavailable
from vdfarm.service.login import login, set_subnet_affinity
from vdfarm.service.moves import pending_moves, rebalance
from vdfarm.store.manifest import write_manifest


def connect(farm, device_ids, version=0):
    vid = vdisk_id(farm)
    for device_id in device_ids:
        farm.sessions.started(device_id, vid, version)


def chosen(result):
    return [result.server.name] + [s.name for s in result.alternatives]


def test_least_busy_server_first(duo, clock):
    a, b = duo["a"], duo["b"]
    ids = add_devices(a, 4)
    connect(a, ids[:2])
    result = login(a, "pc003")
    assert chosen(result) == ["b", "a"]
    assert (result.device, result.vdisk, result.version) == ("pc003", "w", 0)
    assert result.server.host and "least busy" in result.reason
    connect(b, ids[2:])
    connect(b, [add_devices(a, 1, prefix="x")[0]])
    assert chosen(login(b, "pc000")) == ["a", "b"]  # its own session is left out


def test_power_rating_weighs_the_load(duo):
    a = duo["a"]
    ids = add_devices(a, 5)
    connect(a, ids[:3])
    connect(duo["b"], ids[3:4])
    assert chosen(login(a, "pc004")) == ["b", "a"]
    a.servers.configure("a", power_rating=4)
    assert chosen(login(a, "pc004")) == ["a", "b"]


def test_login_by_mac(duo):
    duo["a"].devices.add("m1", mac="52:54:00:12:34:56", vdisk="w")
    assert login(duo["b"], "52-54-00-12-34-56").device == "m1"


def test_a_name_match_wins_over_a_mac_match(duo):
    a = duo["a"]
    a.devices.add("m1", mac="52:54:00:12:34:56", vdisk="w")
    a.devices.add("525400123456")  # named like m1's MAC, no vDisk
    with pytest.raises(Invalid, match="device 525400123456 has no vDisk"):
        login(a, "525400123456")
    assert login(a, "52:54:00:12:34:56").device == "m1"


def test_down_servers_are_left_out(duo, clock):
    a = duo["a"]
    add_devices(a, 1)
    clock.advance(4)
    with pytest.raises(Unavailable, match="^no server is up$"):
        login(a, "pc000")
    beat(a)
    assert chosen(login(a, "pc000")) == ["a"]


def test_only_servers_holding_the_version(duo, clock):
    a, b = duo["a"], duo["b"]
    add_devices(a, 1)
    (b.store.root / "w" / "base.raw").unlink()
    beat(b)
    assert chosen(login(a, "pc000")) == ["a"]
    clock.advance(4)
    beat(b)
    with pytest.raises(Unavailable, match="vDisk w version 0 is held by no up server"):
        login(a, "pc000")


def test_the_version_the_device_boots_decides(duo):
    a, b = duo["a"], duo["b"]
    a.devices.add("t1", vdisk="w", device_type="test")
    a.devices.add("p1", vdisk="w")
    a.versions.new("w")
    a.versions.promote("w", "test")
    beat(a, b)  # b has no copy of version 1
    result = login(b, "t1")
    assert (result.version, chosen(result)) == (1, ["a"])
    assert chosen(login(b, "p1")) == ["b", "a"]  # t1 is on its way to a: b is less busy


def test_max_booting(duo, clock):
    a, b = duo["a"], duo["b"]
    a.servers.configure("b", max_booting=1)
    ids = add_devices(a, 3)
    connect(b, ids[:1])
    assert chosen(login(a, "pc002")) == ["a"]
    clock.advance(61)  # the session on b has booted
    beat(a, b)
    assert chosen(login(a, "pc002")) == ["a", "b"]
    connect(a, ids[1:2])  # equal load; a has a booting device, b none
    assert chosen(login(a, "pc002")) == ["b", "a"]


def test_subnet_affinity(duo):
    a, b = duo["a"], duo["b"]
    a.servers.configure("a", subnet="10.1.0.0/16")
    a.servers.configure("b", subnet="10.2.0.0/16")
    ids = add_devices(a, 2)
    connect(b, ids[:1])
    assert chosen(login(a, "pc001", "10.2.0.9")) == ["a", "b"]
    set_subnet_affinity(a, "w", "best-effort")
    assert chosen(login(a, "pc001", "10.2.0.9")) == ["b", "a"]
    set_subnet_affinity(a, "w", "fixed")
    assert chosen(login(a, "pc001", "10.2.0.9")) == ["b"]
    with pytest.raises(Unavailable, match="fixed subnet affinity.*10.3.0.1"):
        login(a, "pc001", "10.3.0.1")
    with pytest.raises(Unavailable, match="unknown address"):
        login(a, "pc001")


def without_reservations(rows):
    return {table: content for table, content in rows.items() if table != "login_reservations"}


def reservations(farm):
    with farm.session() as session:
        return {
            device: server
            for device, server in session.execute(
                select(Device.name, Server.name)
                .join(LoginReservation, LoginReservation.device_id == Device.id)
                .join(Server, Server.id == LoginReservation.server_id)
            )
        }


def test_logins_at_once_spread_and_respect_max_booting(duo, clock):
    """A boot storm: ten devices log in before any of them connects."""
    a, b = duo["a"], duo["b"]
    add_devices(a, 10)
    a.servers.configure("a", max_booting=4)
    b.servers.configure("b", max_booting=4)
    sent = [chosen(login(a, f"pc{n:03}"))[0] for n in range(8)]
    assert sorted(sent) == ["a"] * 4 + ["b"] * 4  # alternately the less busy one
    with pytest.raises(Unavailable, match="maximum of booting devices"):
        login(b, "pc008")  # both at their limit with devices on their way
    connect(a, [a.exports.resolve("pc000").device_id])  # one arrives: no double count
    assert reservations(a)["pc001"] in ("a", "b") and "pc000" not in reservations(a)
    with pytest.raises(Unavailable, match="maximum of booting devices"):
        login(b, "pc008")
    clock.advance(31)  # the other reservations ran out (those devices never came)
    beat(a, b)
    assert chosen(login(a, "pc008"))[0] == "b"  # a has pc000 booting, b nothing


def test_logins_at_the_same_instant_on_two_servers_never_pass_max_booting(duo):
    """Sixteen devices log in at one instant, half through each server (its
    own engine, as two server processes): each login reads the booting
    counts and then reserves, so without one login at a time two of them
    read the same counts and both take a server's last place."""
    a, b = duo["a"], duo["b"]
    add_devices(a, 16)
    a.servers.configure("a", max_booting=3)
    b.servers.configure("b", max_booting=3)
    start = threading.Barrier(16)

    def one(n: int) -> str:
        farm = a if n % 2 else b
        start.wait()
        try:
            return chosen(login(farm, f"pc{n:03}"))[0]
        except Unavailable as exc:
            assert "maximum of booting devices" in str(exc), exc
            return "refused"

    with ThreadPoolExecutor(16) as pool:
        sent = sorted(pool.map(one, range(16)))
    assert sent == ["a"] * 3 + ["b"] * 3 + ["refused"] * 10, sent
    assert sorted(reservations(a).values()) == ["a"] * 3 + ["b"] * 3


def test_bad_input_changes_nothing(duo):
    a = duo["a"]
    a.devices.add("bare")
    add_devices(a, 1)
    before = dump_db(a.engine)
    with pytest.raises(NotFound, match="no device named nobody"):
        login(a, "nobody")
    with pytest.raises(Invalid, match="device bare has no vDisk assigned"):
        login(a, "bare")
    with pytest.raises(Invalid, match="invalid client address"):
        login(a, "pc000", "10.0.0.300")
    with pytest.raises(Invalid, match="invalid subnet affinity"):
        set_subnet_affinity(a, "w", "sometimes")
    with pytest.raises(NotFound, match="no vDisk named zz"):
        set_subnet_affinity(a, "zz", "fixed")
    assert dump_db(a.engine) == before


@pytest.fixture
def moving(duo, clock):
    """Six devices on a, past their boot phase; a rebalance has ordered three
    of them to b; then eight more devices booted on b, so b is now busier
    than a. Returns (a, b, a moved device's name, an unmoved one's)."""
    a, b = duo["a"], duo["b"]
    connect(a, add_devices(a, 6))
    clock.advance(61)
    beat(a, b)
    moved = sorted(m.device_name for m in rebalance(a, apply=True).moves)
    assert len(moved) == 3 and {o.to_server.name for o in pending_moves(a)} == {"b"}
    connect(b, add_devices(a, 8, prefix="x"))
    staying = sorted({f"pc{n:03}" for n in range(6)} - set(moved))
    return a, b, moved[0], staying[0]


def test_a_pending_move_sends_the_device_to_its_new_server(moving):
    a, b, moved, staying = moving
    before = without_reservations(dump_db(a.engine))
    for farm in (a, b):
        result = login(farm, moved)
        assert chosen(result) == ["b", "a"]
        assert result.reason.startswith("moved by a rebalance to b")
        assert chosen(login(farm, staying)) == ["a", "b"]  # 5 others on a, 8 on b (+1)
    assert without_reservations(dump_db(a.engine)) == before  # login wrote reservations only
    assert reservations(a) == {moved: "b", staying: "a"}
    b.sessions.started(a.exports.resolve(moved).device_id, vdisk_id(b), 0)  # it reconnected
    assert chosen(login(a, moved)) == ["a", "b"]  # no order left: the least busy again


def test_a_move_to_a_server_that_cannot_serve_is_ignored(moving, clock):
    a, b, moved, _ = moving
    a.servers.configure("b", max_booting=8)  # b's eight new devices are booting
    assert chosen(login(a, moved)) == ["a"]
    a.servers.configure("b", max_booting=9)
    assert chosen(login(a, moved)) == ["b", "a"]
    a.servers.configure("a", subnet="10.1.0.0/16")
    a.servers.configure("b", subnet="10.2.0.0/16")
    set_subnet_affinity(a, "w", "fixed")
    assert chosen(login(a, moved, "10.1.0.9")) == ["a"]
    assert chosen(login(a, moved, "10.2.0.9")) == ["b"]
    set_subnet_affinity(a, "w", "none")
    clock.advance(4)
    beat(a)  # b is down
    assert chosen(login(a, moved)) == ["a"]
    beat(b)
    assert chosen(login(a, moved)) == ["b", "a"]
    (b.store.root / "w" / "base.raw").unlink()
    beat(b)  # b no longer holds version 0
    assert chosen(login(a, moved)) == ["a"]


def test_a_private_vdisk_streams_only_from_its_home(duo, clock, tmp_path):
    a, b = duo["a"], duo["b"]
    a.vdisks.import_image("p", make_raw(tmp_path / "p.raw"), mode="private")
    copy_vdisk(a, b, "p")
    beat(a, b)
    a.devices.add("solo", vdisk="p")
    connect(a, add_devices(a, 3))  # a is the busier server
    assert chosen(login(a, "solo"))[0] == "b"  # no home yet: least busy
    target = a.exports.resolve("solo")
    grant = b.locks.acquire(target.vdisk_id, target.device_id, 30)  # b wrote it: its home
    assert a.locks.list()[0].home == "b"
    b.locks.release(target.vdisk_id, target.device_id, grant.token)
    a.locks.move_home("p", "a")  # the admin: a's copy is the current one
    assert chosen(login(b, "solo")) == ["a"]  # only the home; no alternatives
    clock.advance(10)
    beat(b)  # a is down
    with pytest.raises(Unavailable, match="written on server a .down.*lock home p SERVER"):
        login(b, "solo")
    b.locks.move_home("p", "b")
    assert chosen(login(b, "solo")) == ["b"]
    assert chosen(login(b, "pc000")) == ["b"]  # standard devices: every up server


def test_an_admins_question_reserves_nothing(duo):
    a = duo["a"]
    add_devices(a, 2)
    assert (
        chosen(login(a, "pc000", reserve=False))[0] == chosen(login(a, "pc001", reserve=False))[0]
    )
    assert reservations(a) == {}
    first = chosen(login(a, "pc000"))[0]
    assert reservations(a) == {"pc000": first}
    assert chosen(login(a, "pc001"))[0] != first  # the reservation counted


def test_the_answer_tells_the_agent_what_to_check_and_whether_to_fail_over(duo, tmp_path):
    a = duo["a"]
    add_devices(a, 1)
    a.devices.add("t1", vdisk="w", device_type="maintenance")
    result = login(a, "pc000")
    info = a.vdisks.show("w")
    assert (result.sha256, result.size) == (a.versions.list("w")[0].sha256, info.size)
    assert len(result.sha256 or "") == 64
    assert (result.write_cache_type, result.failover) == ("server-disk", False)  # on the server
    a.sessions.end_all()  # the login's reservation: the vDisk is off again
    with a.session() as session:
        session.execute(delete(LoginReservation))
    a.vdisks.set("w", write_cache="device-ram-overflow")
    result = login(a, "pc000")
    assert (result.write_cache_type, result.failover) == ("device-ram-overflow", True)
    assert target_sha(a, "pc000") == result.sha256  # the stream describes the same copy
    a.versions.new("w")  # t1 boots the open version: no fixed hash, one writer
    a.servers.record_inventory()  # a's store holds it (its heartbeat would say so)
    maintenance = login(a, "t1")
    assert (maintenance.version, maintenance.sha256, maintenance.failover) == (1, None, False)
    assert target_sha(a, "t1") is None


def target_sha(farm, device):
    return farm.exports.resolve(device).sha256


def test_excluded_servers_are_skipped(duo):
    a = duo["a"]
    add_devices(a, 1)
    assert chosen(login(a, "pc000", exclude=["a"])) == ["b"]
    assert chosen(login(a, "pc000", exclude=["b", "nobody"])) == ["a"]
    with pytest.raises(Unavailable, match=r"\(excluded by the device: a, b\)"):
        login(a, "pc000", exclude=["a", "b"])


@pytest.mark.parametrize(
    ("exclude", "text"),
    [
        (["../a"], "invalid server name"),
        ([f"s{n}" for n in range(17)], "at most 16 server names"),
        ("a", "give a list of server names"),
    ],
)
def test_bad_exclusions_are_refused(duo, exclude, text):
    add_devices(duo["a"], 1)
    with pytest.raises(Invalid, match=text):
        login(duo["a"], "pc000", exclude=exclude)


def test_a_server_whose_copy_has_another_hash_is_never_chosen(duo, clock):
    """b's copy of version 0 differs from the database's (the manifest says
    another sha256, as a copy made from other bytes would): its inventory
    drops it and login never places a device there."""
    a, b = duo["a"], duo["b"]
    add_devices(a, 1)
    assert set(chosen(login(a, "pc000"))) == {"a", "b"}
    manifest = b.store.manifest("w")
    other = replace(manifest.files[0], sha256="0" * 64)
    write_manifest(b.store.root / "w", replace(manifest, files=(other, *manifest.files[1:])))
    clock.advance(4)
    beat(a, b)
    assert ("w", 0) not in b.servers.inventory()["b"]
    for _ in range(3):
        assert chosen(login(a, "pc000")) == ["a"]
