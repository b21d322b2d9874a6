"""Answers kept for a moment: good for their time, bounded in number."""

from __future__ import annotations

from vdfarm.api.recent_answers import RecentAnswers


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_kept_for_its_time_then_looked_up_again():
    clock = Clock()
    recent: RecentAnswers[str] = RecentAnswers(ttl_s=1.0, clock=clock)
    assert recent.get("k") is None
    recent.put("k", "v")
    clock.now += 0.99
    assert recent.get("k") == "v"
    clock.now += 0.01
    assert recent.get("k") is None
    assert len(recent) == 0  # the stale one is gone, not only hidden


def test_a_caller_varying_its_key_cannot_make_it_hold_more():
    clock = Clock()
    recent: RecentAnswers[int] = RecentAnswers(max_entries=3, clock=clock)
    for n in range(1000):
        recent.put(("vdisk", n), n)
    assert len(recent) == 3
    assert [recent.get(("vdisk", n)) for n in (996, 997, 998, 999)] == [None, 997, 998, 999]


def test_putting_again_renews_the_time_and_the_place():
    clock = Clock()
    recent: RecentAnswers[str] = RecentAnswers(ttl_s=1.0, max_entries=2, clock=clock)
    recent.put("a", "1")
    recent.put("b", "2")
    clock.now += 0.5
    recent.put("a", "1'")  # now the newest
    recent.put("c", "3")  # b, the oldest put, goes
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == ("1'", None, "3")
    clock.now += 0.9
    assert recent.get("a") == "1'"
