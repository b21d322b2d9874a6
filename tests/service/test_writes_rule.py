"""The one rule "does this device write to its vDisk?" (`version_rules.writes_vdisk`)
and what derives from it (lock, home server, pinned), over every vDisk mode ×
device type × state of the booted version; then the places that use it."""

from __future__ import annotations

import itertools

import pytest

from tests.service.helpers import make_raw
from vdfarm.service import version_rules as rules
from vdfarm.service.moves import farm_state

PRIV, STD = "private", "standard"
PROD, TEST, MAINT = "production", "test", "maintenance"
M, T, P, PEND = "maintenance", "test", "production", "pending"

# (mode, device type, booted version's state) -> writes to the vDisk itself.
# A device that writes needs the vDisk's lock, is sent to the vDisk's home
# server by login, and is pinned (never moved by a rebalance).
WRITES = {
    (PRIV, PROD, M): True,
    (PRIV, PROD, T): True,
    (PRIV, PROD, P): True,
    (PRIV, PROD, PEND): True,
    (PRIV, TEST, M): True,
    (PRIV, TEST, T): True,
    (PRIV, TEST, P): True,
    (PRIV, TEST, PEND): True,
    (PRIV, MAINT, M): True,
    (PRIV, MAINT, T): True,
    (PRIV, MAINT, P): True,
    (PRIV, MAINT, PEND): True,
    (STD, PROD, M): False,
    (STD, PROD, T): False,
    (STD, PROD, P): False,
    (STD, PROD, PEND): False,
    (STD, TEST, M): False,
    (STD, TEST, T): False,
    (STD, TEST, P): False,
    (STD, TEST, PEND): False,
    (STD, MAINT, M): True,  # the one writer of a standard vDisk: its open version
    (STD, MAINT, T): False,  # nothing open: a maintenance device boots as test
    (STD, MAINT, P): False,
    (STD, MAINT, PEND): False,
}


def test_the_table_covers_every_case():
    every = itertools.product((PRIV, STD), rules.DEVICE_TYPES, rules.VERSION_STATES)
    assert set(WRITES) == set(every)


@pytest.mark.parametrize("case, writes", sorted(WRITES.items()))
def test_writes_vdisk_and_what_derives_from_it(case, writes):
    mode, device_type, state = case
    assert rules.writes_vdisk(mode, device_type, state) is writes
    assert rules.needs_lock(mode, device_type, state) is writes
    assert rules.home_server_only(mode, device_type, state) is writes
    assert rules.is_pinned(mode, device_type, state, None) is writes
    assert rules.is_pinned(mode, device_type, state, 0) is writes
    assert rules.is_pinned(mode, device_type, state, 4096) is True  # data in a server cache


@pytest.fixture
def maintained(farm, raw_image):
    """vDisk w (standard) with devices of each type."""
    farm.vdisks.import_image("w", raw_image)
    for name, device_type in (("p1", PROD), ("t1", TEST), ("m1", MAINT)):
        farm.devices.add(name, vdisk="w", device_type=device_type)
    return farm


def test_export_targets_carry_the_answer(maintained, tmp_path):
    farm = maintained
    m1 = farm.exports.resolve("m1")
    assert (m1.writes_vdisk, m1.writable) == (False, False)  # nothing open: boots as test
    farm.versions.new("w")
    answers = {n: farm.exports.resolve(n) for n in ("p1", "t1", "m1")}
    assert {n: (t.writes_vdisk, t.writable) for n, t in answers.items()} == {
        "p1": (False, False),
        "t1": (False, False),
        "m1": (True, True),
    }
    farm.vdisks.import_image("solo", make_raw(tmp_path / "solo.raw"), mode=PRIV)
    farm.devices.add("pc", vdisk="solo")
    assert farm.exports.resolve("pc").writes_vdisk is True


def _pinned(farm):
    """Device name -> pinned, as the rebalance planner sees it."""
    with farm.session() as session:
        _, sessions = farm_state(session, farm.now(), farm.settings)
    return {s.device_name: s.pinned for s in sessions}


def test_rebalance_pins_only_devices_that_write(maintained):
    farm = maintained
    vid = farm.exports.resolve("m1").vdisk_id
    for name in ("p1", "t1", "m1"):
        target = farm.exports.resolve(name)
        farm.sessions.started(target.device_id, vid, target.version)
    assert _pinned(farm) == {"p1": False, "t1": False, "m1": False}
    farm.versions.new("w")
    farm.sessions.ended(target.device_id)  # m1 boots again: onto the open version
    target = farm.exports.resolve("m1")
    farm.sessions.started(target.device_id, vid, target.version)
    assert _pinned(farm) == {"p1": False, "t1": False, "m1": True}
