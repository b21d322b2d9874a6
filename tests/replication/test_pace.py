"""The pace a peer keeps: judged per window of time spent waiting on it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vdfarm.replication.pace import Pace


def test_a_fast_peer_keeps_the_pace_window_after_window():
    pace = Pace(min_rate_bps=1000, window_s=10)
    for _ in range(50):
        assert pace.record(1.0, 2000) is None


def test_a_trickle_is_judged_once_the_window_has_been_waited():
    pace = Pace(min_rate_bps=1000, window_s=10)
    for _ in range(9):
        assert pace.record(1.0, 10) is None  # not judged before ten seconds of waiting
    why = pace.record(1.0, 10)
    assert why == "sent 0.0 KiB/s over 10 s of waiting (a peer keeps at least 1 KiB/s)"


def test_only_waiting_counts_so_a_busy_receiver_does_not_fail_a_peer():
    pace = Pace(min_rate_bps=1000, window_s=10)
    for _ in range(10_000):  # the bytes were queued: each receive returned at once
        assert pace.record(0.0, 1) is None


def test_a_new_window_forgets_a_slow_start():
    pace = Pace(min_rate_bps=1000, window_s=10)
    assert pace.record(5.0, 100) is None
    assert pace.record(5.0, 20_000) is None  # 2010 B/s over the window: kept
    assert pace.record(9.0, 0) is None
    assert pace.record(1.0, 10_000) is None  # judged on this window alone


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 10**6)), max_size=50))
def test_the_verdict_is_the_windows_rate(receives):
    pace = Pace(min_rate_bps=1000, window_s=10)
    waited, arrived = 0.0, 0
    for seconds, got in receives:
        verdict = pace.record(seconds, got)
        waited, arrived = waited + seconds, arrived + got
        if waited >= 10:
            assert (verdict is None) == (arrived / waited >= 1000)
            waited, arrived = 0.0, 0
        else:
            assert verdict is None
