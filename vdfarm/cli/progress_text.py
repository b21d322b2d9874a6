"""Progress as words: rate, ETA and the plain lines printed when stderr is
not a terminal.

Rules: pure (no printing, no clock of its own: the caller passes `now`).
A pass is one step of one piece of work ("copy", "hash"...); its rate is
the bytes done since the pass began over the time since then, its ETA the
bytes left at that rate (unknown until a byte was done). A plain line is
due when the pass ends, or when it got another `STEP_PCT` % further and
at least `MIN_GAP_S` since the last line, or `EVERY_S` passed since the
last line; a pass with no known total gets a line every `EVERY_S`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vdfarm.cli.output import fmt_size

EVERY_S = 5.0
STEP_PCT = 10
MIN_GAP_S = 1.0


def fmt_eta(seconds: float | None) -> str | None:
    """SECONDS as 1h02m, 3m05s or 12s (None: unknown)."""
    if seconds is None:
        return None
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def fmt_rate(bytes_per_s: float | None) -> str | None:
    """A rate as `210.0 MiB/s` (None: unknown)."""
    if bytes_per_s is None:
        return None
    return f"{fmt_size(round(bytes_per_s))}/s"


@dataclass(frozen=True)
class Reading:
    """Where one pass stands: bytes done of total (0: unknown), bytes per
    second and seconds left (None: unknown yet)."""

    step: str
    done: int
    total: int
    rate: float | None
    eta: float | None

    @property
    def percent(self) -> int | None:
        if self.total <= 0:
            return None
        return min(100, self.done * 100 // self.total)

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total


class Meter:
    """Follows the passes of one piece of work and reads rate and ETA."""

    def __init__(self) -> None:
        self._step: str | None = None
        self._started = 0.0
        self._done_at_start = 0

    def read(self, step: str, done: int, total: int, now: float) -> Reading:
        """The reading for DONE of TOTAL bytes of STEP at time NOW (seconds,
        any origin); a new STEP (or DONE going back) begins a new pass."""
        if step != self._step or done < self._done_at_start:
            self._step, self._started, self._done_at_start = step, now, done
        elapsed = now - self._started
        gained = done - self._done_at_start
        rate = gained / elapsed if elapsed > 0 and gained > 0 else None
        eta = None
        if rate is not None and total > 0:
            eta = max(total - done, 0) / rate
        return Reading(step=step, done=done, total=total, rate=rate, eta=eta)


class LineSchedule:
    """Decides when a plain line is due (see the module rules)."""

    def __init__(self) -> None:
        self._step: str | None = None
        self._last_at: float | None = None
        self._last_pct = 0
        self._ended = False

    def due(self, reading: Reading, now: float) -> bool:
        """True if a line for READING at NOW should be printed (and counts it
        printed)."""
        if reading.step != self._step:
            self._step, self._last_pct, self._ended = reading.step, 0, False
            if self._last_at is None:
                self._last_at = now
        if self._ended:
            return False
        last = self._last_at if self._last_at is not None else now
        pct = reading.percent
        if reading.finished:
            self._ended = True
        elif not (
            now - last >= EVERY_S
            or (
                pct is not None
                and pct // STEP_PCT > self._last_pct // STEP_PCT
                and now - last >= MIN_GAP_S
            )
        ):
            return False
        self._last_at, self._last_pct = now, pct or 0
        return True


def plain_line(label: str, reading: Reading) -> str:
    """`import golden (copy): 512.0 MiB of 1.0 GiB (50 %), 210.0 MiB/s, 3s left`."""
    head = f"{label} ({reading.step}): {fmt_size(reading.done)}"
    if reading.total > 0:
        head += f" of {fmt_size(reading.total)} ({reading.percent} %)"
    parts = [head]
    if (rate := fmt_rate(reading.rate)) is not None:
        parts.append(rate)
    if reading.finished:
        parts.append("done")
    elif (eta := fmt_eta(reading.eta)) is not None:
        parts.append(f"{eta} left")
    return ", ".join(parts)
