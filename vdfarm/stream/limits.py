"""What one NBD client may make the server hold, and who is let in.

Rules:
- The boot network is hostile: every resource a client can make the server
  hold has a bound with a default — connections in all, per source
  address, and still in the handshake; the handshake's duration; bytes
  received but not yet parsed while a handshake step runs; reply bytes
  queued for a client that does not read them. 0 switches a bound off
  (for measuring what the bounds cost, not for production).
- `Admission` counts connections and decides at accept time; a refused
  connection is closed before the NBD greeting. It is plain bookkeeping
  (no sockets, no event loop), so its rules are tested alone.
- Refusals are logged once per (address, reason) per minute
  (`RefusalLog`), so a flood cannot flood the log.
- The bounds themselves are plain data in vdfarm.nbd.limits (the CLI reads
  their defaults without loading the server).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from vdfarm.nbd.limits import ConnectionLimits

log = logging.getLogger("vdfarm.stream")


class RefusalLog:
    """Logs a refusal once per (address, reason) per `every` seconds."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def refused(self, address: str, reason: str, detail: str = "") -> bool:
        """Log that ADDRESS was refused for REASON (once a minute per pair);
        True if this call logged."""
        now = self.clock()
        key = (address, reason)
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        if len(self._last) > 4096:  # forget old pairs; a flood of addresses stays bounded
            self._last = {k: t for k, t in self._last.items() if now - t < self.every}
        self._last[key] = now
        log.warning("refused %s: %s%s (logged once a minute)", address, reason, detail)
        return True


class Admission:
    """Connection counts of one listener, and the decision to let one in."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self.handshaking = 0
        self.per_address: Counter[str] = Counter()

    def refusal(self, address: str) -> str | None:
        """Why a new connection from ADDRESS is refused, or None to let it in."""
        limits = self.limits
        if limits.max_connections and self.total >= limits.max_connections:
            return f"connection limit reached ({limits.max_connections})"
        if limits.max_per_address and self.per_address[address] >= limits.max_per_address:
            return f"too many connections from this address ({limits.max_per_address})"
        if limits.max_handshaking and self.handshaking >= limits.max_handshaking:
            return f"too many connections in the handshake ({limits.max_handshaking})"
        return None

    def admitted(self, address: str) -> None:
        """A connection from ADDRESS was let in (it starts in the handshake)."""
        self.total += 1
        self.handshaking += 1
        self.per_address[address] += 1

    def handshake_done(self) -> None:
        """An admitted connection reached transmission."""
        self.handshaking -= 1

    def left(self, address: str, in_handshake: bool) -> None:
        """An admitted connection from ADDRESS closed."""
        self.total -= 1
        if in_handshake:
            self.handshaking -= 1
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]
