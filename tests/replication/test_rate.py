"""The rate a copy shows: bytes per second over the last few seconds."""

from __future__ import annotations

from vdfarm.replication.rate import RateMeter


def test_the_rate_follows_the_last_seconds():
    now = [0.0]
    meter = RateMeter(lambda: now[0], window=5.0)
    assert meter.rate_bps() == 0
    for _ in range(10):  # 100 bytes a second for 10 s
        now[0] += 1
        meter.add(100)
    assert meter.rate_bps() == 100
    for _ in range(10):  # then 1000 a second
        now[0] += 1
        meter.add(1000)
    assert meter.rate_bps() == 1000
    assert meter.total == 11000


def test_a_stall_brings_the_rate_down():
    now = [0.0]
    meter = RateMeter(lambda: now[0], window=5.0)
    now[0] = 1.0
    meter.add(1000)
    now[0] = 10.0
    meter.add(0)
    assert meter.rate_bps() == 0  # nothing came in the last 5 s
