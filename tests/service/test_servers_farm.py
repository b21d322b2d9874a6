"""Servers of a farm: heartbeats and liveness, connected/booting counts,
the verified-copy inventory, and settings — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket

import pytest

from tests.service.helpers import audit_actions, dump_db
from tests.service.multi import (
    add_devices,
    beat,
    copy_vdisk,
    duo_fixture,  # noqa: F401  (the fixture)
    vdisk_id,
)
from vdfarm.service.errors import Invalid, NotFound
from vdfarm.service.login import login
from vdfarm.service.servers import is_wildcard


def by_name(farm):
    return {s.name: s for s in farm.servers.list()}


def test_up_until_the_heartbeat_is_older_than_the_timeout(duo, clock):
    a, b = duo["a"], duo["b"]
    assert by_name(a)["a"].up and by_name(a)["b"].up
    clock.advance(3)
    assert by_name(a)["a"].up  # exactly the timeout: still up
    clock.advance(0.5)
    assert not by_name(a)["a"].up and not by_name(b)["b"].up
    b.servers.heartbeat()
    servers = by_name(a)
    assert (servers["a"].up, servers["b"].up) == (False, True)
    assert servers["b"].last_heartbeat == clock.now
    a.settings.change(heartbeat_timeout_s=10)  # the farm's setting (PVS uses 8 s)
    assert by_name(a)["a"].up


def test_register_makes_a_server_up_with_its_ports(duo, clock):
    clock.advance(60)
    info = duo["a"].servers.register(10809, 8080)
    assert info.up and info.last_heartbeat == clock.now
    listed = by_name(duo["b"])
    assert listed["a"].up and (listed["a"].nbd_port, listed["a"].api_port) == (10809, 8080)
    assert not listed["b"].up


def test_register_stores_the_advertised_address(duo):
    a, b = duo["a"], duo["b"]
    assert a.servers.register(10809, 8080, "10.1.2.3").hostname == "10.1.2.3"
    assert by_name(b)["a"].hostname == "10.1.2.3"
    b.servers.register(10810, None, "pxe-b.example")
    add_devices(a, 1)
    answer = login(a, "pc000")
    hosts = {s.name: s.host for s in [answer.server, *answer.alternatives]}
    assert hosts == {"a": "10.1.2.3", "b": "pxe-b.example"}
    a.servers.register(10809, 8080)  # no address given: the host name, as before
    assert by_name(b)["a"].hostname == socket.gethostname()


@pytest.mark.parametrize(
    "advertise",
    [
        "",
        " ",
        "a b",
        "host\n",
        "tab\there",
        "x" * 256,
        42,
    ],
)
def test_register_refuses_a_bad_address_and_changes_nothing(duo, clock, advertise):
    a = duo["a"]
    a.servers.register(10809, 8080, "10.1.2.3")
    clock.advance(1)
    before = dump_db(a.engine)
    with pytest.raises(Invalid, match="invalid advertised address") as caught:
        a.servers.register(10811, 8081, advertise)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200
    assert dump_db(a.engine) == before
    assert a.servers.register(10809, 8080, "x" * 255).hostname == "x" * 255


@pytest.mark.parametrize(
    ("host", "wildcard"),
    [
        ("0.0.0.0", True),
        ("::", True),
        ("0:0::0", True),
        ("", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("pxe1.lan", False),
    ],
)
def test_is_wildcard(host, wildcard):
    assert is_wildcard(host) is wildcard


def test_connected_and_booting_counts(duo, clock):
    a, b = duo["a"], duo["b"]
    d1, d2, d3 = add_devices(a, 3)
    vid = vdisk_id(a)
    a.sessions.started(d1, vid, 0)
    a.sessions.started(d2, vid, 0)
    clock.advance(40)
    b.sessions.started(d3, vid, 0)
    servers = by_name(a)
    assert (servers["a"].connected, servers["a"].booting) == (2, 2)
    assert (servers["b"].connected, servers["b"].booting) == (1, 1)
    clock.advance(30)  # d1, d2 connected 70 s ago: booted
    servers = by_name(a)
    assert (servers["a"].connected, servers["a"].booting) == (2, 0)
    assert (servers["b"].connected, servers["b"].booting) == (1, 1)
    a.settings.change(boot_phase_s=100)
    assert by_name(a)["a"].booting == 2


def test_inventory_lists_verified_copies_only(duo):
    a, b = duo["a"], duo["b"]
    assert a.servers.inventory() == {"a": [("w", 0)], "b": [("w", 0)]}
    base = b.store.root / "w" / "base.raw"
    with open(base, "ab") as fh:
        fh.write(b"x")
    b.servers.heartbeat()
    assert a.servers.inventory() == {"a": [("w", 0)], "b": []}
    copy_vdisk(a, b)
    manifest_path = b.store.root / "w" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    assert b.servers.record_inventory() == []
    copy_vdisk(a, b)
    assert b.servers.record_inventory() == [("w", 0)]


def test_inventory_follows_new_versions_and_a_missing_store(duo):
    a, b = duo["a"], duo["b"]
    a.versions.new("w")
    beat(a, b)
    assert a.servers.inventory() == {"a": [("w", 0), ("w", 1)], "b": [("w", 0)]}
    a.versions.promote("w", "production")
    copy_vdisk(a, b)
    beat(b)
    assert a.servers.inventory()["b"] == [("w", 0), ("w", 1)]
    a.vdisks.delete("w")
    beat(a, b)
    assert a.servers.inventory() == {"a": [], "b": []}


def test_heartbeat_without_inventory_leaves_it(duo, clock):
    b = duo["b"]
    (b.store.root / "w" / "base.raw").unlink()
    clock.advance(1)
    b.servers.heartbeat(inventory=False)
    assert b.servers.inventory()["b"] == [("w", 0)]
    assert by_name(b)["b"].last_heartbeat == clock.now
    b.servers.heartbeat()
    assert b.servers.inventory()["b"] == []


def test_configure(duo):
    a = duo["a"]
    info = a.servers.configure("b", power_rating=2.5, subnet="10.1.2.3/16", max_booting=20)
    assert (info.power_rating, info.subnet, info.max_booting) == (2.5, "10.1.0.0/16", 20)
    assert by_name(a)["b"].subnet == "10.1.0.0/16"
    assert a.servers.configure("b", subnet=None).subnet is None
    assert audit_actions(a)[-2:] == ["server.set", "server.set"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "nothing to change"),
        ({"power_rating": 0}, "invalid power rating"),
        ({"power_rating": -1.0}, "invalid power rating"),
        ({"subnet": "10.1.2.3"}, "invalid subnet"),
        ({"subnet": "not/a/net"}, "invalid subnet"),
        ({"max_booting": 0}, "invalid max-booting"),
        ({"max_booting": True}, "invalid max-booting"),
    ],
)
def test_configure_refuses_bad_values_and_changes_nothing(duo, kwargs, message):
    a = duo["a"]
    before = dump_db(a.engine)
    with pytest.raises(Invalid, match=message):
        a.servers.configure("b", **kwargs)
    assert dump_db(a.engine) == before


def test_configure_unknown_server(duo):
    with pytest.raises(NotFound, match="no server named zz"):
        duo["a"].servers.configure("zz", power_rating=2)
