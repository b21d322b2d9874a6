"""Audit retention (issue 9, Low): `farm set --audit-days N` (0 keeps the
audit forever, default 365), enforced by `AuditService.prune(now)` in bounded
batches, with the time given by the caller (here a hand-moved clock)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.service.helpers import dump
from vdfarm.service.errors import Invalid


def add_entries(farm, clock, count, step_days):
    """COUNT device changes STEP_DAYS apart (one audit row each)."""
    for i in range(count):
        farm.devices.add(f"pc{i}")
        clock.advance(step_days * 86400)


def test_default_retention_is_a_year(farm):
    assert farm.settings.show().audit_days == 365
    assert farm.audit.retention_days() == 365


def test_prune_deletes_only_rows_older_than_the_retention(farm, clock):
    farm.settings.change(audit_days=10)
    add_entries(farm, clock, 20, 1)  # one row a day for 20 days
    kept_from = clock() - timedelta(days=10)
    everything = farm.audit.list()
    expected = [e.id for e in everything if e.at >= kept_from]
    assert 0 < len(expected) < len(everything)
    deleted = farm.audit.prune(clock())
    remaining = farm.audit.list()
    assert [e.id for e in remaining] == expected
    assert all(e.at >= kept_from for e in remaining)
    assert deleted == len(everything) - len(expected)
    assert farm.audit.prune(clock()) == 0  # nothing more to do


def test_time_moves_and_more_is_pruned(farm, clock):
    farm.settings.change(audit_days=30)
    add_entries(farm, clock, 5, 0)
    assert farm.audit.prune(clock()) == 0
    clock.advance(31 * 86400)
    assert farm.audit.prune(clock()) == 7  # server.init, farm.set, 5 adds
    assert farm.audit.list() == []


def test_zero_keeps_everything(farm, clock):
    farm.settings.change(audit_days=0)
    add_entries(farm, clock, 3, 400)
    before = dump(farm)
    clock.advance(10 * 365 * 86400)
    assert farm.audit.prune(clock()) == 0
    assert dump(farm) == before


def test_prune_works_in_bounded_batches(farm, clock):
    farm.settings.change(audit_days=1)
    add_entries(farm, clock, 25, 0)
    clock.advance(2 * 86400)
    total = len(farm.audit.list())  # 27: server.init, farm.set, 25 adds
    assert farm.audit.prune(clock(), batch=4, max_batches=3) == 12
    assert len(farm.audit.list()) == total - 12
    oldest_left = farm.audit.list()[0]
    assert oldest_left.action == "device.add"  # the oldest went first
    assert farm.audit.prune(clock(), batch=4) == total - 12
    assert farm.audit.list() == []


@pytest.mark.parametrize(
    "value, text",
    [(-1, "invalid audit retention"), (1.5, "whole number"), (True, "invalid audit retention")],
)
def test_bad_retention_changes_nothing(farm, value, text):
    before = dump(farm)
    with pytest.raises(Invalid, match=text):
        farm.settings.change(audit_days=value)
    assert dump(farm) == before


def test_prune_needs_an_aware_time(farm, clock):
    with pytest.raises(Invalid, match="aware"):
        farm.audit.prune(clock().replace(tzinfo=None))
