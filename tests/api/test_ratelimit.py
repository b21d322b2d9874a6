"""The login limits alone, on a clock the test moves: a token bucket per
source, a reservation cap per source, bounded memory; sources are IPv4
addresses or IPv6 /64s."""

from __future__ import annotations

import pytest

from vdfarm.api.limits import ApiLimits
from vdfarm.api.ratelimit import RateLimiter, ReservationCap, source_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    limiter = RateLimiter(rate=20, burst=40, clock=clock)
    assert all(limiter.allow("a") for _ in range(40))
    assert not limiter.allow("a")
    assert limiter.retry_after("a") == pytest.approx(0.05)
    assert limiter.allow("b")  # another source has its own bucket
    clock.now += 0.05
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 10
    assert sum(limiter.allow("a") for _ in range(100)) == 40  # never more than the burst


def test_bucket_memory_is_bounded():
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock, max_sources=3)
    for n in range(10):
        limiter.allow(f"s{n}")
        clock.now += 0.1
    assert len(limiter._buckets) == 3


@pytest.mark.parametrize("rate, burst", [(0, 1), (1, 0), (-1, 5)])
def test_bad_limits(rate, burst):
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


def test_reservation_cap_counts_devices_per_source_within_the_window():
    clock = Clock()
    cap = ReservationCap(limit=2, window_s=30, clock=clock)
    assert cap.allow("a", "pc1") and cap.allow("a", "pc2")
    assert cap.allow("a", "pc1")  # the same device again: not a new one
    assert not cap.allow("a", "pc3")
    assert cap.allow("b", "pc3")
    assert cap.held("a") == 2
    clock.now += 29
    assert not cap.allow("a", "pc3")
    clock.now += 1
    assert cap.allow("a", "pc3") and cap.held("a") == 1


def test_reservation_cap_memory_is_bounded():
    clock = Clock()
    cap = ReservationCap(limit=1, window_s=5, clock=clock, max_sources=2)
    for n in range(6):
        cap.allow(f"s{n}", "pc")
    assert len(cap._held) == 2


@pytest.mark.parametrize(
    "host, key",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("testclient", "testclient"),
    ],
)
def test_sources_are_addresses_or_ipv6_64s(host, key):
    assert source_key(host) == key


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_body_bytes", -1),
        ("login_rate_per_s", 0),
        ("login_burst", 0),
        ("reservations_per_source", 0),
        ("reservation_window_s", 0),
    ],
)
def test_limits_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError):
        ApiLimits(**{field: value})
