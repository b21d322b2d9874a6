"""A token bucket on received bytes: the bandwidth cap of replica copies.

Rules:
- `take(n)` returns once N more bytes may pass at `rate_bps` on average;
  with no rate (None) it returns at once. The bucket holds at most a
  quarter second of rate (the burst) and starts empty, so the rate over
  any few seconds (what `replication status` shows) stays at the cap.
- A take larger than the bucket is allowed: the bucket goes into debt and
  the caller sleeps until it is paid, so the average never exceeds the rate.
- `set_rate` changes the cap at once, for the next take (a live
  `vdfarm store set --max-rate`); the bytes already owed stay owed; a cap
  set where there was none starts with an empty bucket.
- Pure apart from the injected clock and sleep; safe to share between
  threads (the state is behind a lock, the sleep outside it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST_S = 0.25


def check_rate(rate_bps: int | None) -> int | None:
    """RATE_BPS if it is None or a positive int. Raises ValueError."""
    if rate_bps is not None and (
        not isinstance(rate_bps, int) or isinstance(rate_bps, bool) or rate_bps <= 0
    ):
        raise ValueError(f"a rate is a positive number of bytes per second, not {rate_bps!r}")
    return rate_bps


class Throttle:
    """At most RATE_BPS bytes per second on average (None: no cap)."""

    def __init__(
        self,
        rate_bps: int | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._rate = check_rate(rate_bps)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._at = clock()

    @property
    def rate_bps(self) -> int | None:
        """The cap now (None: no cap)."""
        return self._rate

    def _burst(self) -> float:
        return 0.0 if self._rate is None else self._rate * BURST_S

    def _refill(self, now: float) -> None:
        if self._rate is not None:
            self._tokens = min(self._burst(), self._tokens + (now - self._at) * self._rate)
        self._at = now

    def take(self, n: int) -> None:
        """Return once N bytes may pass (sleeping if the bucket is short)."""
        with self._lock:
            if self._rate is None or n <= 0:
                return
            self._refill(self._clock())
            self._tokens -= n
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)

    def set_rate(self, rate_bps: int | None) -> None:
        """Cap at RATE_BPS from now on (None: no cap). Raises ValueError."""
        check_rate(rate_bps)
        with self._lock:
            self._refill(self._clock())
            was_capped = self._rate is not None
            self._rate = rate_bps
            if rate_bps is None:
                self._tokens = 0.0
            elif was_capped:
                self._tokens = min(self._tokens, self._burst())
            else:
                self._tokens = 0.0
