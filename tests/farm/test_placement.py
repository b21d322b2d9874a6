"""Placement (pure): liveness, verified copies, subnet affinity, max-booting,
weighted least-busy order, deterministic ties, a rebalance's preferred server
— by example and by invariant."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from vdfarm.farm.placement import (
    Candidate,
    DeviceNeed,
    in_subnet,
    is_up,
    load,
    order_key,
    place,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
FRESH = NOW - timedelta(seconds=1)
STALE = NOW - timedelta(seconds=4)
W0 = frozenset({("w", 0)})
DEVICE = DeviceNeed(name="pc1", vdisk="w", version=0)


def server(name, sid=None, **kw):
    values = {"last_heartbeat": FRESH, "versions": W0} | kw
    return Candidate(id=sid if sid is not None else ord(name[-1]), name=name, **values)


def names(placement):
    return [placement.primary.name] + [c.name for c in placement.alternatives]


def test_least_busy_by_connected_per_power_first():
    farm = [
        server("a", connected=4),
        server("b", connected=3),
        server("c", connected=6, power_rating=3.0),
    ]
    placement = place(DEVICE, farm, NOW)
    assert names(placement) == ["c", "b", "a"]
    assert "least busy of 3" in placement.reason


def test_ties_break_by_booting_then_name():
    farm = [server("b", connected=2), server("a", connected=2), server("c", connected=2, booting=1)]
    assert names(place(DEVICE, farm, NOW)) == ["a", "b", "c"]
    assert names(place(DEVICE, list(reversed(farm)), NOW)) == ["a", "b", "c"]


def test_down_servers_are_never_chosen():
    farm = [
        server("a", last_heartbeat=STALE),
        server("b", connected=9),
        server("c", last_heartbeat=None),
    ]
    assert names(place(DEVICE, farm, NOW)) == ["b"]
    nowhere = place(DEVICE, [server("a", last_heartbeat=STALE)], NOW)
    assert (nowhere.primary, nowhere.alternatives, nowhere.reason) == (None, (), "no server is up")


def test_timeout_is_inclusive_and_configurable():
    assert is_up(NOW - timedelta(seconds=3), NOW, timedelta(seconds=3))
    assert not is_up(NOW - timedelta(seconds=3, microseconds=1), NOW, timedelta(seconds=3))
    farm = [server("a", last_heartbeat=NOW - timedelta(seconds=8))]
    assert place(DEVICE, farm, NOW).primary is None
    assert place(DEVICE, farm, NOW, timedelta(seconds=10)).primary.name == "a"


def test_only_servers_with_the_version():
    need = DeviceNeed(name="pc1", vdisk="w", version=2)
    farm = [server("a"), server("b", versions=frozenset({("w", 2)}), connected=50)]
    assert names(place(need, farm, NOW)) == ["b"]
    nowhere = place(need, [server("a")], NOW)
    assert nowhere.primary is None
    assert nowhere.reason == "vDisk w version 2 is held by no up server"


def test_max_booting_sends_booting_devices_elsewhere():
    farm = [server("a", booting=2, max_booting=2), server("b", connected=40, booting=3)]
    assert names(place(DEVICE, farm, NOW)) == ["b"]
    full = place(DEVICE, [server("a", booting=500)], NOW)
    assert full.primary is None and "maximum of booting devices" in full.reason


def test_subnet_affinity():
    here = ipaddress.ip_address("10.1.2.3")
    farm = [
        server("a", subnet="10.1.0.0/16", connected=9),
        server("b", subnet="10.2.0.0/16"),
        server("c"),
    ]
    none = DeviceNeed(name="pc", vdisk="w", version=0, affinity="none", address=here)
    best = DeviceNeed(name="pc", vdisk="w", version=0, affinity="best-effort", address=here)
    fixed = DeviceNeed(name="pc", vdisk="w", version=0, affinity="fixed", address=here)
    assert names(place(none, farm, NOW)) == ["b", "c", "a"]
    assert names(place(best, farm, NOW)) == ["a", "b", "c"]
    assert names(place(fixed, farm, NOW)) == ["a"]
    away = place(fixed, farm[1:], NOW)
    assert away.primary is None and "fixed subnet affinity" in away.reason
    assert "10.1.2.3" in away.reason
    unknown = DeviceNeed(name="pc", vdisk="w", version=0, affinity="fixed")
    assert "unknown address" in place(unknown, farm, NOW).reason


def test_preferred_server_first_then_the_usual_order():
    farm = [server("a", connected=1), server("b", connected=9), server("c", connected=5)]
    placement = place(DEVICE, farm, NOW, preferred=ord("b"))
    assert names(placement) == ["b", "a", "c"]
    assert placement.reason.startswith("moved by a rebalance to b, one of 3 up server(s)")
    assert names(place(DEVICE, farm, NOW, preferred=ord("a"))) == ["a", "c", "b"]
    assert place(DEVICE, farm, NOW, preferred=None) == place(DEVICE, farm, NOW)


def test_preferred_server_that_may_not_serve_is_ignored():
    here = ipaddress.ip_address("10.1.2.3")
    fixed = DeviceNeed(name="pc", vdisk="w", version=0, affinity="fixed", address=here)
    farm = [
        server("a", connected=3, subnet="10.1.0.0/16"),
        server("d", last_heartbeat=STALE, subnet="10.1.0.0/16"),
        server("e", versions=frozenset(), subnet="10.1.0.0/16"),
        server("f", booting=2, max_booting=2, subnet="10.1.0.0/16"),
        server("g", subnet="10.2.0.0/16"),
    ]
    usual = place(fixed, farm, NOW)
    assert names(usual) == ["a"] and usual.reason.startswith("least busy")
    for name in ("d", "e", "f", "g", "z"):  # down, no copy, full, wrong subnet, unknown
        assert place(fixed, farm, NOW, preferred=ord(name)) == usual
    nowhere = place(DEVICE, [server("d", last_heartbeat=STALE)], NOW, preferred=ord("d"))
    assert nowhere.primary is None and nowhere.reason == "no server is up"


def test_helpers():
    assert load(3, 0) == float("inf") and load(3, 2.0) == 1.5
    assert in_subnet(ipaddress.ip_address("10.0.0.1"), "10.0.0.0/8")
    assert not in_subnet(None, "10.0.0.0/8")
    assert not in_subnet(ipaddress.ip_address("10.0.0.1"), "garbage")
    assert not in_subnet(ipaddress.ip_address("10.0.0.1"), None)


# -- invariants -------------------------------------------------------------------

ADDRESSES = st.sampled_from([None, "10.1.0.5", "10.2.0.5", "192.168.1.9"])
SUBNETS = st.sampled_from([None, "10.1.0.0/16", "10.2.0.0/16", "10.0.0.0/8"])
KEYS = st.sampled_from([("w", 0), ("w", 1), ("x", 0)])


@st.composite
def candidates(draw):
    count = draw(st.integers(0, 8))
    result = []
    for index in range(count):
        age = draw(st.one_of(st.none(), st.floats(0, 10)))
        result.append(
            Candidate(
                id=index,
                name=draw(st.sampled_from(["s1", "s2", "s3", "s4"])) + f"-{index}",
                last_heartbeat=None if age is None else NOW - timedelta(seconds=age),
                power_rating=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0])),
                connected=draw(st.integers(0, 50)),
                booting=draw(st.integers(0, 10)),
                max_booting=draw(st.integers(1, 12)),
                subnet=draw(SUBNETS),
                versions=frozenset(draw(st.sets(KEYS))),
            )
        )
    return result


@st.composite
def devices(draw):
    vdisk, version = draw(KEYS)
    address = draw(ADDRESSES)
    return DeviceNeed(
        name="pc",
        vdisk=vdisk,
        version=version,
        affinity=draw(st.sampled_from(["none", "best-effort", "fixed"])),
        address=None if address is None else ipaddress.ip_address(address),
    )


@settings(max_examples=400, deadline=None)
@given(devices(), candidates())
def test_invariants(device, farm):
    placement = place(device, farm, NOW)
    chosen = [] if placement.primary is None else [placement.primary, *placement.alternatives]
    assert placement.reason
    for candidate in chosen:
        assert is_up(candidate.last_heartbeat, NOW, timedelta(seconds=3))
        assert device.key in candidate.versions
        assert candidate.booting < candidate.max_booting
        if device.affinity == "fixed":
            assert in_subnet(device.address, candidate.subnet)
    keys = [order_key(c, device) for c in chosen]
    assert keys == sorted(keys)
    assert len({c.id for c in chosen}) == len(chosen)
    eligible = [
        c
        for c in farm
        if is_up(c.last_heartbeat, NOW, timedelta(seconds=3))
        and device.key in c.versions
        and c.booting < c.max_booting
        and (device.affinity != "fixed" or in_subnet(device.address, c.subnet))
    ]
    assert {c.id for c in chosen} == {c.id for c in eligible}
    assert place(device, list(reversed(farm)), NOW) == placement


@settings(max_examples=400, deadline=None)
@given(devices(), candidates(), st.integers(-1, 8))
def test_preferred_invariants(device, farm, preferred):
    usual = place(device, farm, NOW)
    placement = place(device, farm, NOW, preferred=preferred)
    usual_order = [] if usual.primary is None else [usual.primary, *usual.alternatives]
    order = [] if placement.primary is None else [placement.primary, *placement.alternatives]
    if preferred not in {c.id for c in usual_order}:
        assert placement == usual
    else:
        assert placement.primary.id == preferred
        assert order[1:] == [c for c in usual_order if c.id != preferred]
        assert "moved by a rebalance" in placement.reason
    assert sorted(c.id for c in order) == sorted(c.id for c in usual_order)
