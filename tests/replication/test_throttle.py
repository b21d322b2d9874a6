"""The token bucket with a fake clock: the average never passes the rate
(a lower bound on time, asked for), the bucket starts empty and holds a
quarter second of rate, a live
change of the rate takes effect at the next take."""

from __future__ import annotations

import threading

import pytest

from tests.replication.fake_time import FakeTime
from vdfarm.replication.throttle import Throttle

MB = 1_000_000


def test_no_cap_never_sleeps():
    time = FakeTime()
    throttle = Throttle(None, time.clock, time.sleep)
    for _ in range(1000):
        throttle.take(1 << 20)
    assert time.slept == [] and throttle.rate_bps is None


def test_200_mb_at_20_mb_per_s_takes_at_least_9_s():
    time = FakeTime()
    throttle = Throttle(20 * MB, time.clock, time.sleep)
    start = time.now
    for _ in range(200 * MB // (256 * 1024) + 1):
        throttle.take(256 * 1024)
    elapsed = time.now - start
    assert elapsed >= 9.0
    assert elapsed == pytest.approx(200 * MB / (20 * MB), rel=0.02)  # the bucket starts empty


def test_the_bucket_starts_empty_and_holds_a_quarter_second():
    time = FakeTime()
    throttle = Throttle(10 * MB, time.clock, time.sleep)
    throttle.take(1 * MB)  # nothing saved yet: a tenth of a second
    assert time.slept == [pytest.approx(0.1)]
    time.now += 0.1  # the sleep passed
    time.now += 60  # idle for a minute: the bucket refills to a quarter second only
    throttle.take(int(2.5 * MB))
    assert len(time.slept) == 1
    throttle.take(5 * MB)
    assert time.slept[-1] == pytest.approx(0.5)


def test_a_take_larger_than_the_bucket_goes_into_debt():
    time = FakeTime()
    throttle = Throttle(1 * MB, time.clock, time.sleep)
    throttle.take(3 * MB)
    assert time.slept == [pytest.approx(3.0)]
    throttle.take(1 * MB)
    assert time.slept[-1] == pytest.approx(1.0)


def test_set_rate_takes_effect_at_the_next_take():
    time = FakeTime()
    throttle = Throttle(10 * MB, time.clock, time.sleep)
    throttle.set_rate(1 * MB)
    assert throttle.rate_bps == 1 * MB
    throttle.take(1 * MB)
    assert time.slept == [pytest.approx(1.0)]
    throttle.set_rate(None)
    throttle.take(100 * MB)
    assert len(time.slept) == 1
    throttle.set_rate(2 * MB)  # a new cap starts with an empty bucket
    throttle.take(2 * MB)
    assert time.slept[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [0, -5, 1.5, "fast", True])
def test_a_rate_is_a_positive_int(bad):
    with pytest.raises(ValueError, match="positive number of bytes"):
        Throttle(bad)
    with pytest.raises(ValueError):
        Throttle(None).set_rate(bad)


def test_threads_share_the_cap():
    """Four threads take 1 MB each at the same instant (the clock stands
    still): each waits for the debt of those before it."""
    slept: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    throttle = Throttle(1 * MB, lambda: 100.0, sleep)
    threads = [threading.Thread(target=throttle.take, args=(MB,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(slept) == [pytest.approx(s) for s in (1.0, 2.0, 3.0, 4.0)]
