"""Progress as words (vdfarm.cli.progress_text): rate, ETA, the plain lines and
when they are due, with the clock passed in."""

from __future__ import annotations

from vdfarm.cli.progress_text import (
    LineSchedule,
    Meter,
    Reading,
    fmt_eta,
    fmt_rate,
    plain_line,
)

MIB = 1 << 20
GIB = 1 << 30


def test_rate_and_eta_over_the_pass():
    meter = Meter()
    first = meter.read("copy", 0, GIB, now=100.0)
    assert (first.rate, first.eta, first.percent) == (None, None, 0)
    half = meter.read("copy", 512 * MIB, GIB, now=102.0)
    assert half.rate == 256 * MIB
    assert half.eta == 2.0
    assert half.percent == 50 and not half.finished
    end = meter.read("copy", GIB, GIB, now=104.0)
    assert end.eta == 0.0 and end.finished and end.percent == 100


def test_a_new_step_begins_a_new_pass():
    meter = Meter()
    meter.read("copy", 0, GIB, now=0.0)
    meter.read("copy", GIB, GIB, now=1.0)
    hash_start = meter.read("hash", 0, GIB, now=1.0)
    assert hash_start.rate is None
    later = meter.read("hash", 100 * MIB, GIB, now=3.0)
    assert later.rate == 50 * MIB


def test_done_going_back_begins_a_new_pass():
    meter = Meter()
    meter.read("copies", 80 * MIB, GIB, now=0.0)
    back = meter.read("copies", 10 * MIB, GIB, now=5.0)
    assert back.rate is None
    assert meter.read("copies", 20 * MIB, GIB, now=6.0).rate == 10 * MIB


def test_unknown_total():
    reading = Meter().read("copies", 5 * MIB, 0, now=0.0)
    assert reading.percent is None and not reading.finished and reading.eta is None
    assert plain_line("wait w v1", reading) == "wait w v1 (copies): 5.0 MiB"


def test_plain_line_words():
    reading = Reading(step="copy", done=512 * MIB, total=GIB, rate=210 * MIB, eta=2.6)
    assert plain_line("import golden", reading) == (
        "import golden (copy): 512.0 MiB of 1.0 GiB (50 %), 210.0 MiB/s, 3s left"
    )
    done = Reading(step="hash", done=GIB, total=GIB, rate=300 * MIB, eta=0.0)
    assert plain_line("import golden", done) == (
        "import golden (hash): 1.0 GiB of 1.0 GiB (100 %), 300.0 MiB/s, done"
    )
    early = Reading(step="copy", done=0, total=GIB, rate=None, eta=None)
    assert plain_line("export w", early) == "export w (copy): 0 B of 1.0 GiB (0 %)"


def test_eta_and_rate_words():
    assert [fmt_eta(s) for s in (None, 0, 12.4, 185, 3720)] == [None, "0s", "12s", "3m05s", "1h02m"]
    assert fmt_rate(None) is None
    assert fmt_rate(1536) == "1.5 KiB/s"


def _due_at(schedule, meter, points):
    """The times of POINTS ((now, done)) on a 100 MiB pass that print a line."""
    total = 100 * MIB
    return [now for now, done in points if schedule.due(meter.read("copy", done, total, now), now)]


def test_a_line_every_ten_percent_but_not_more_than_one_a_second():
    fast = [(i / 10, i * 5 * MIB) for i in range(21)]  # 5 % each 0.1 s
    assert _due_at(LineSchedule(), Meter(), fast) == [1.0, 2.0]  # 50 %, then the end
    slow = [(2.0 * i, i * 5 * MIB) for i in range(1, 21)]  # 5 % each 2 s
    times = _due_at(LineSchedule(), Meter(), slow)
    assert times == [4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 36.0, 40.0]


def test_a_line_every_five_seconds_when_percent_stalls():
    crawl = [(float(t), t * MIB // 10) for t in range(0, 21)]  # 0.1 MiB/s of 100 MiB
    assert _due_at(LineSchedule(), Meter(), crawl) == [5.0, 10.0, 15.0, 20.0]


def test_the_end_of_each_pass_is_printed_once():
    schedule, meter = LineSchedule(), Meter()
    points = [("copy", GIB, 0.1), ("copy", GIB, 0.2), ("hash", 0, 0.2), ("hash", GIB, 0.3)]
    due = [schedule.due(meter.read(step, done, GIB, now), now) for step, done, now in points]
    assert due == [True, False, False, True]
