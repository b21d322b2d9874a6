"""The rate of a copy as a person wants to read it: bytes per second over
the last few seconds (WINDOW_S), so an ETA follows the copy as it is now,
not its average since the start.

Pure apart from the injected clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 5.0


class RateMeter:
    """Counts bytes and tells their rate over the last WINDOW seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window: float = WINDOW_S):
        self._clock = clock
        self._window = window
        self.total = 0
        self._samples: deque[tuple[float, int]] = deque([(clock(), 0)])

    def add(self, n: int) -> None:
        """Count N more bytes, now."""
        self.total += n
        now = self._clock()
        self._samples.append((now, self.total))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()

    def rate_bps(self) -> int:
        """Bytes per second over the window (0 before a second sample)."""
        (then, before), (now, total) = self._samples[0], self._samples[-1]
        if now <= then:
            return 0
        return int((total - before) / (now - then))
