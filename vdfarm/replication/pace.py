"""The slowest a peer may send a copy: a peer that trickles is dropped
like a silent one, and the next peer is tried.

A peer that sends a byte every few seconds never trips the read timeout
(silence), yet would hold a copy for days. `Pace` judges the rate a peer
keeps while the receiver waits on it.

Rules:
- Only the time spent waiting on the peer counts (blocked in a receive):
  the receiver's own cap, its disk writer's back-pressure and its CPU are
  not the peer's fault, and while the receiver is busy the peer's bytes
  queue in the socket and arrive at once.
- Judged per window: once WINDOW_S seconds of waiting have added up, the
  bytes that arrived in them must be at least MIN_RATE_BPS per second
  waited, else the peer is too slow; then a new window starts (a peer
  slow for a moment and fast since is judged on now).
- Pure: the caller measures the time and counts the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_RATE_BPS = 1024 * 1024  # far below any LAN, far above a trickle
WINDOW_S = 30.0


@dataclass
class Pace:
    """A peer's pace over the current window (see the module's rules)."""

    min_rate_bps: float = MIN_RATE_BPS
    window_s: float = WINDOW_S
    waited_s: float = 0.0
    arrived: int = 0

    def record(self, waited_s: float, arrived: int) -> str | None:
        """A receive waited WAITED_S seconds and got ARRIVED bytes. Returns
        why the peer is too slow, or None while it keeps the pace."""
        self.waited_s += max(0.0, waited_s)
        self.arrived += arrived
        if self.waited_s < self.window_s:
            return None
        rate = self.arrived / self.waited_s
        waited, self.waited_s, self.arrived = self.waited_s, 0.0, 0
        if rate >= self.min_rate_bps:
            return None
        return (
            f"sent {rate / 1024:.1f} KiB/s over {waited:.0f} s of waiting "
            f"(a peer keeps at least {self.min_rate_bps / 1024:.0f} KiB/s)"
        )
