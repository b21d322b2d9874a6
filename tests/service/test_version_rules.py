"""The pure version rules: what each device type boots, promote/revert steps,
what a merge keeps — tables of chains, no database, no files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vdfarm.service import version_rules as rules
from vdfarm.service.errors import Invalid, NotFound

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def chain(*accesses, pending=()):
    """Versions 0..n in a line with ACCESSES; numbers in PENDING are production at LATER."""
    return [
        rules.VersionState(
            number=n,
            parent=n - 1 if n else None,
            access=a,
            production_at=LATER if n in pending else NOW,
        )
        for n, a in enumerate(accesses)
    ]


P, T, M = "production", "test", "maintenance"


@pytest.mark.parametrize(
    "versions, pin, expected",
    [
        # (production, test, maintenance) → (number, writable)
        (chain(P), None, [(0, False), (0, False), (0, False)]),
        (chain(P, M), None, [(0, False), (0, False), (1, True)]),
        (chain(P, T), None, [(0, False), (1, False), (1, False)]),
        (chain(P, T, M), None, [(0, False), (1, False), (2, True)]),
        (chain(P, P, T), None, [(1, False), (2, False), (2, False)]),
        (chain(P, P, P, pending={2}), None, [(1, False), (2, False), (2, False)]),
        (chain(P, P, P, M), 1, [(1, False), (2, False), (3, True)]),
        (chain(P, P, P), 0, [(0, False), (2, False), (2, False)]),
        (chain(P, P, P), 7, [(2, False), (2, False), (2, False)]),  # a pin that vanished
    ],
)
def test_boot_choice(versions, pin, expected):
    got = [rules.boot_choice(versions, t, pin, NOW) for t in (P, T, M)]
    assert [(c.number, c.writable) for c in got] == expected


def test_pending_takes_effect_at_its_time():
    versions = chain(P, P, pending={1})
    assert rules.shown_access(versions[1], NOW) == "pending"
    assert rules.production_version(versions, NOW) == 0
    assert rules.shown_access(versions[1], LATER) == "production"
    assert rules.production_version(versions, LATER) == 1


def test_the_base_is_never_pending():
    base = rules.VersionState(0, None, P, production_at=LATER)
    assert rules.shown_access(base, NOW) == "production"


def test_chain_numbers_follow_parents():
    versions = [
        rules.VersionState(0, None, P),
        rules.VersionState(3, 0, P),
        rules.VersionState(5, 3, T),
    ]
    assert rules.chain_numbers(versions, 5) == [0, 3, 5]
    assert rules.chain_numbers(versions, 0) == [0]


@pytest.mark.parametrize(
    "versions, to, expected",
    [
        (chain(P, M), T, (1, T, True)),
        (chain(P, M), P, (1, P, True)),
        (chain(P, T), P, (1, P, False)),
        (chain(P, P, pending={1}), P, (1, P, False)),
    ],
)
def test_promotions(versions, to, expected):
    top, access, seals = rules.promotion(versions, to, NOW, "w")
    assert (top.number, access, seals) == expected


@pytest.mark.parametrize(
    "versions, to, text",
    [
        (chain(P), T, "no version open to promote: its newest version 0 is the base"),
        (chain(P, P), T, "version 1 is already in production"),
        (chain(P, T), T, "version 1 of vDisk w is already in test"),
        (chain(P, P, pending={1}), T, "pending production; revert it"),
        (chain(P, M), "staging", "invalid access 'staging'"),
    ],
)
def test_promotion_refusals(versions, to, text):
    with pytest.raises(Invalid, match=text):
        rules.promotion(versions, to, NOW, "w")


@pytest.mark.parametrize(
    "versions, expected",
    [
        (chain(P, P), (1, T)),
        (chain(P, P, pending={1}), (1, T)),
        (chain(P, T), (1, M)),
    ],
)
def test_reversions(versions, expected):
    top, access = rules.reversion(versions, NOW, "w")
    assert (top.number, access) == expected


@pytest.mark.parametrize(
    "versions, text",
    [
        (chain(P), "cannot revert the base of vDisk w"),
        (chain(P, M), "already in maintenance"),
    ],
)
def test_reversion_refusals(versions, text):
    with pytest.raises(Invalid, match=text):
        rules.reversion(versions, NOW, "w")


@pytest.mark.parametrize(
    "versions, pin, new_base, keep, removed",
    [
        (chain(P, P, P, P), None, False, 3, (1, 2)),
        (chain(P, P, P, P), None, True, 3, (0, 1, 2)),
        (chain(P, P, P, T, M), None, False, 2, (1,)),
        (chain(P, P, P, T, M), None, True, 2, (0, 1)),
        (chain(P, P, P, P), 2, False, 2, (1,)),
        (chain(P, T, T, T), None, False, 3, (1, 2)),
        (chain(P, P, P, P, pending={3}), None, False, 2, (1,)),
    ],
)
def test_merge_plans_keep_every_booted_version(versions, pin, new_base, keep, removed):
    plan = rules.merge_plan(versions, pin, NOW, new_base=new_base, vdisk="w")
    assert (plan.keep, plan.removed, plan.new_base) == (keep, removed, new_base)
    assert not rules.needed(versions, pin, NOW) & set(plan.removed)


@pytest.mark.parametrize(
    "versions, pin, new_base, text",
    [
        (chain(P), None, False, "it has no version above its base"),
        (chain(P, P), None, False, "version 1 already sits on the base"),
        (chain(P, T, M), None, False, "version 1 already sits on the base"),
        (chain(P, T), None, True, "production devices boot its base"),
        (chain(P, P, P), 0, True, "production devices boot its base"),
    ],
)
def test_merge_refusals(versions, pin, new_base, text):
    with pytest.raises(Invalid, match=text):
        rules.merge_plan(versions, pin, NOW, new_base=new_base, vdisk="w")


def test_find():
    assert rules.find(chain(P, T), 1, "w").access == T
    with pytest.raises(NotFound, match="vDisk w has no version 4"):
        rules.find(chain(P, T), 4, "w")


@pytest.mark.parametrize(
    ("mode", "device_type", "state", "cache", "pinned", "fails_over"),
    [
        ("standard", "production", "production", "device-ram", False, True),
        ("standard", "test", "test", "device-disk", False, True),
        ("standard", "production", "production", "device-ram-overflow", False, True),
        ("standard", "production", "production", "server-disk", True, False),
        ("standard", "production", "production", "server-ram", True, False),
        ("standard", "maintenance", "maintenance", "device-ram", True, False),
        ("private", "production", "production", "device-ram", True, False),
    ],
)
def test_a_write_cache_on_the_device_never_pins_and_may_fail_over(
    mode, device_type, state, cache, pinned, fails_over
):
    assert rules.is_pinned(mode, device_type, state, 4096, cache) is pinned
    assert rules.may_fail_over(mode, device_type, state, cache) is fails_over
