"""Per-source limits of the open login route: a token bucket per address,
and a cap on the devices one address may hold reservations for.

Rules:
- Pure and in memory, per server: no I/O, no asyncio, no FastAPI; time
  comes from an injectable monotonic clock (seconds), so tests move it.
- A source is an address: an IPv4 address, or the /64 network of an IPv6
  one (a single host usually holds a whole /64), `source_key`.
- Memory is bounded: each table keeps at most `max_sources` addresses; when
  full, the entries that carry no state any more (a full bucket, no
  reservation in the window) are dropped first, then the oldest.
- Callers run on one event loop thread or hold no shared state across
  threads without the lock each class takes.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

Clock = Callable[[], float]
DEFAULT_MAX_SOURCES = 10_000
EPSILON = 1e-9  # clock arithmetic in floats: a token due now is here now


IPV6_SOURCE_PREFIX = 64


def source_key(host: str) -> str:
    """The key HOST's requests are counted under: an IPv4 address (also
    when IPv4-mapped), the /64 of an IPv6 address, or HOST itself if it is
    not an address."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)


class RateLimiter:
    """A token bucket per key: RATE tokens a second, at most BURST saved."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: (tokens, at)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Take one token from KEY's bucket: True if there was one."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            allowed = tokens >= 1.0 - EPSILON
            if allowed:
                tokens = max(0.0, tokens - 1.0)
            self._buckets[key] = (tokens, now)
            self._trim(now)
            return allowed

    def retry_after(self, key: str) -> float:
        """Seconds until KEY's bucket holds a token again (0 if it does)."""
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, self.clock()))
            tokens = min(self.burst, tokens + (self.clock() - at) * self.rate)
            return max(0.0, (1.0 - tokens) / self.rate)

    def _trim(self, now: float) -> None:
        if len(self._buckets) <= self.max_sources:
            return
        refill_s = self.burst / self.rate
        for key in [k for k, (_, at) in self._buckets.items() if now - at >= refill_s]:
            del self._buckets[key]
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)  # least recently used


class ReservationCap:
    """At most LIMIT devices reserved per source within WINDOW_S seconds.

    A device logged in again by the same source does not count twice.
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        clock: Clock = time.monotonic,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a reservation cap needs limit >= 1 and window_s > 0")
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self.max_sources = max_sources
        self._held: OrderedDict[str, dict[str, float]] = OrderedDict()  # source: {device: at}
        self._lock = threading.Lock()

    def allow(self, source: str, device: str) -> bool:
        """Count a reservation of DEVICE by SOURCE: True if within the cap
        (then it is counted), False if SOURCE holds LIMIT others already."""
        with self._lock:
            now = self.clock()
            held = self._fresh(self._held.pop(source, {}), now)
            if device not in held and len(held) >= self.limit:
                self._held[source] = held
                return False
            held[device] = now
            self._held[source] = held
            self._trim(now)
            return True

    def held(self, source: str) -> int:
        """How many devices SOURCE holds reservations for now."""
        with self._lock:
            return len(self._fresh(self._held.get(source, {}), self.clock()))

    def _fresh(self, held: dict[str, float], now: float) -> dict[str, float]:
        return {d: at for d, at in held.items() if now - at < self.window_s}

    def _trim(self, now: float) -> None:
        if len(self._held) <= self.max_sources:
            return
        for source in [s for s, held in self._held.items() if not self._fresh(held, now)]:
            del self._held[source]
        while len(self._held) > self.max_sources:
            self._held.popitem(last=False)
