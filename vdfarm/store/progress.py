"""How long work reports how far it got: a callback, nothing printed.

Rules: a slow step (a copy, a conversion, a hash) calls `progress(step,
done, total)` with the bytes it has done of the bytes it will do, as
often as it likes (the front end decides what to show and how often);
`step` is a short word naming the pass ("copy", "hash", "merge",
"check"). Work given no callback reports to `silent`. A callback must
not raise; the work does not wait for it.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def silent(step: str, done: int, total: int) -> None:
    """The callback of work nobody watches."""


def fraction_to_bytes(progress: Progress, step: str, total: int) -> Callable[[float], None]:
    """A callback taking a fraction (0.0-1.0) that reports it to PROGRESS
    as bytes of TOTAL (qemu-img reports percentages)."""

    def report(fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        progress(step, round(fraction * total), total)

    return report


def shifted(progress: Progress, before: int, total: int) -> Progress:
    """A callback for one part of a longer pass: what it reports is added
    to BEFORE bytes already done, out of TOTAL for the whole pass."""

    def report(step: str, done: int, _part_total: int) -> None:
        progress(step, before + done, total)

    return report
