"""Copy windows and rate caps of replication, as text people type and as values.

Rules (pure: no I/O, no clock — the time is an argument):
- A window is "HH:MM-HH:MM" in the server's local time: HH 00-23, MM 00-59,
  start and end differ; it covers [start, end) and wraps midnight when end
  is earlier ("22:00-06:00"). Several windows may be given, each alone or
  comma-separated; none means always open. At most MAX_WINDOWS.
- The database keeps windows as one text: "HH:MM-HH:MM,HH:MM-HH:MM" ("":
  always open).
- A rate is bytes per second: a number with an optional unit, "/s"
  optional: B, kB/KB (10^3), MB (10^6), GB (10^9), TB (10^12), KiB (2^10),
  MiB (2^20), GiB (2^30), TiB (2^40); "0" or "none" means no cap. A lower
  case "b" (bits) is refused rather than guessed.
- Every refusal is a ValueError with one line naming what was given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

MAX_WINDOWS = 16
MINUTES_PER_DAY = 24 * 60
MAX_RATE_BPS = 10**13  # 10 TB/s: beyond any link
NO_CAP = ("0", "none")
RATE_HELP = (
    "bytes per second, e.g. 50MB/s, 1.5GB/s, 100M, 512KiB/s "
    "(MB = 10^6 bytes, MiB = 2^20); 0 or none: no cap"
)

_WINDOW = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", re.ASCII)
_RATE = re.compile(r"(\d+(?:\.\d+)?|\.\d+) *([kKmMgGtT]?)(i?)(B?)(/s)?", re.ASCII)
_PREFIX = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


@dataclass(frozen=True, order=True)
class Window:
    """[start, end) in minutes after local midnight; wraps when end < start."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        """True if MINUTE (after midnight) is inside this window."""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _minutes(hour: str, minute: str, given: str) -> int:
    if not 0 <= int(hour) <= 23:
        raise ValueError(f"invalid window {given!r}: hour must be 00-23")
    if not 0 <= int(minute) <= 59:
        raise ValueError(f"invalid window {given!r}: minute must be 00-59")
    return int(hour) * 60 + int(minute)


def parse_window(text: str) -> Window:
    """TEXT ("HH:MM-HH:MM") as a Window. Raises ValueError."""
    given = text.strip() if isinstance(text, str) else text
    found = _WINDOW.fullmatch(given) if isinstance(given, str) else None
    if found is None:
        raise ValueError(f"invalid window {text!r}: give HH:MM-HH:MM, e.g. 22:00-06:00")
    start = _minutes(found[1], found[2], given)
    end = _minutes(found[3], found[4], given)
    if start == end:
        raise ValueError(
            f"invalid window {given!r}: start and end are the same "
            f"(give no window to copy at any time)"
        )
    return Window(start, end)


def parse_windows(values: Iterable[str]) -> tuple[Window, ...]:
    """Every window of VALUES (each one window or several comma-separated),
    duplicates dropped, in the order given. Raises ValueError."""
    windows: list[Window] = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"invalid window {value!r}: give HH:MM-HH:MM, e.g. 22:00-06:00")
        for part in value.split(","):
            window = parse_window(part)
            if window not in windows:
                windows.append(window)
    if len(windows) > MAX_WINDOWS:
        raise ValueError(f"too many windows ({len(windows)}): give at most {MAX_WINDOWS}")
    return tuple(windows)


def windows_text(windows: Sequence[Window]) -> str:
    """WINDOWS as the database keeps them ("" for none)."""
    return ",".join(str(w) for w in windows)


def windows_of_text(text: str) -> tuple[Window, ...]:
    """The windows the database's TEXT names ("" : none); a part that does
    not parse (a hand-edited row) is left out, never fatal."""
    windows = []
    for part in (text or "").split(","):
        try:
            windows.append(parse_window(part))
        except ValueError:
            continue
    return tuple(windows)


def _minute_of(moment: datetime | time) -> int:
    return moment.hour * 60 + moment.minute


def is_open(windows: Sequence[Window], local: datetime | time) -> bool:
    """True if copies may run at LOCAL (the server's local wall-clock time):
    no windows at all, or LOCAL inside one of them."""
    if not windows:
        return True
    minute = _minute_of(local)
    return any(w.contains(minute) for w in windows)


def next_change(windows: Sequence[Window], local: datetime) -> datetime | None:
    """The first whole minute after LOCAL at which `is_open` changes its
    answer, or None if it never does (no windows, or they cover the day)."""
    now_open = is_open(windows, local)
    start = local.replace(second=0, microsecond=0)
    for step in range(1, MINUTES_PER_DAY + 1):
        moment = start + timedelta(minutes=step)
        if is_open(windows, moment) != now_open:
            return moment
    return None


def parse_rate(text: str | int) -> int | None:
    """TEXT as bytes per second, None for no cap ("0", "none", 0). An int is
    taken as bytes per second. Raises ValueError."""
    if isinstance(text, int) and not isinstance(text, bool):
        value: float = text
    elif isinstance(text, str):
        given = text.strip()
        if given.lower() in NO_CAP:
            return None
        found = _RATE.fullmatch(given)
        if found is None or (found[3] and not found[2]):
            raise ValueError(f"invalid rate {text!r}: give {RATE_HELP}")
        number, prefix, binary, _, _ = found.groups()
        base = 1024 if binary else 1000
        value = float(number) * base ** _PREFIX[prefix.lower()]
    else:
        raise ValueError(f"invalid rate {text!r}: give {RATE_HELP}")
    if value == 0:
        return None
    if not math.isfinite(value) or value < 1 or value > MAX_RATE_BPS:
        raise ValueError(f"invalid rate {text!r}: give 1 byte/s to 10TB/s, or none")
    return round(value)


def lowest_cap(*caps: int | None) -> int | None:
    """The strictest of CAPS (bytes per second; None: no cap), None if none caps."""
    given = [cap for cap in caps if cap is not None]
    return min(given) if given else None


def rate_text(bps: int | None) -> str:
    """BPS as people read it ("50MB/s", "1.5GB/s", "none")."""
    if bps is None:
        return "none"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if bps >= size:
            return f"{bps / size:.4g}{unit}/s"
    return f"{bps}B/s"
