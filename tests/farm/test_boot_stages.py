"""The boot stage rules: ipxe starts a boot, the others only move forward,
kernel counts only from the script's address, and stuck means more than a
minute in a stage other than up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vdfarm.farm.boot_stages import (
    IPXE,
    KERNEL,
    STREAMING,
    UP,
    advance,
    is_stuck,
    kernel_counts,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_boot_goes_through_every_stage_in_order():
    record = advance(None, IPXE, at(0), "10.0.0.5")
    for n, stage in enumerate((KERNEL, STREAMING, UP), start=1):
        record = advance(record, stage, at(n))
        assert record is not None and record.stage == stage and record.stage_at == at(n)
    assert [record.at(s) for s in (IPXE, KERNEL, STREAMING, UP)] == [at(0), at(1), at(2), at(3)]
    assert record.client_ip == "10.0.0.5"


def test_a_stage_reached_or_passed_changes_nothing():
    record = advance(advance(None, IPXE, at(0), "a"), KERNEL, at(1))
    assert advance(record, KERNEL, at(2)) is None  # the initramfs after the kernel
    streaming = advance(record, STREAMING, at(3))
    assert advance(streaming, KERNEL, at(4)) is None
    up = advance(streaming, UP, at(5))
    assert advance(up, STREAMING, at(6)) is None  # a reconnect within the boot


def test_ipxe_starts_a_new_boot_and_clears_the_later_stages():
    record = advance(None, IPXE, at(0), "a")
    for n, stage in enumerate((KERNEL, STREAMING, UP), start=1):
        record = advance(record, stage, at(n))
    again = advance(record, IPXE, at(10), "b")
    assert again.stage == IPXE and again.times == (at(10), None, None, None)
    assert again.client_ip == "b"


def test_a_stage_may_skip_ahead_and_a_boot_without_ipxe_starts_where_it_is_seen():
    assert advance(advance(None, IPXE, at(0), "a"), STREAMING, at(1)).at(KERNEL) is None
    started = advance(None, STREAMING, at(5), "a")
    assert started.stage == STREAMING and started.times == (None, None, at(5), None)
    assert started.client_ip is None


def test_an_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="no boot stage 'bios'"):
        advance(None, "bios", at(0))


def test_kernel_counts_only_after_the_script_and_from_its_address():
    record = advance(None, IPXE, at(0), "10.0.0.5")
    assert kernel_counts(record, "10.0.0.5")
    assert kernel_counts(advance(record, KERNEL, at(1)), "10.0.0.5")
    assert not kernel_counts(record, "10.0.0.6")
    assert not kernel_counts(record, None)
    assert not kernel_counts(None, "10.0.0.5")
    assert not kernel_counts(advance(record, STREAMING, at(1)), "10.0.0.5")
    assert not kernel_counts(advance(None, STREAMING, at(1)), None)


def test_stuck_is_more_than_a_minute_in_a_stage_other_than_up():
    record = advance(None, IPXE, at(0), "a")
    assert not is_stuck(record, at(60))
    assert is_stuck(record, at(61))
    assert is_stuck(advance(record, STREAMING, at(1)), at(62))
    assert not is_stuck(advance(advance(record, STREAMING, at(1)), UP, at(2)), at(3600))
    assert not is_stuck(None, at(3600))
    assert is_stuck(record, at(11), after=timedelta(seconds=10))


def test_a_device_retrying_its_script_stays_in_the_same_boot_and_gets_stuck():
    record = advance(None, IPXE, at(0), "a")
    assert advance(record, IPXE, at(15), "a") is None
    moved = advance(record, IPXE, at(30), "b")  # a new DHCP lease: the address follows
    assert (moved.stage_at, moved.client_ip) == (at(0), "b")
    assert is_stuck(moved, at(61))
