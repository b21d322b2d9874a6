"""Answers kept for a moment: what a route looked up in the database a
second ago is still true a second later, and a boot storm asks the same
question hundreds of times.

Rules:
- A value is kept for TTL_S seconds from when it was put, then looked up
  again; at most MAX_ENTRIES are kept (the oldest put goes first), so a
  caller varying its key cannot make the server hold more.
- Only answers are kept, never refusals: a file that appears is served at
  once; a refusal costs its look-up (the route's rate limit bounds them).
- Pure apart from the injected clock; used from the event loop only (no
  lock: the loop runs one callback at a time).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

TTL_S = 1.0
MAX_ENTRIES = 256


class RecentAnswers(Generic[V]):
    """Values by key, each good for TTL_S seconds (see the module's rules)."""

    def __init__(
        self,
        ttl_s: float = TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._kept: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        """The value put for KEY less than TTL_S seconds ago, else None."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        at, value = kept
        if self._clock() - at >= self._ttl_s:
            del self._kept[key]
            return None
        return value

    def put(self, key: Hashable, value: V) -> None:
        """Keep VALUE for KEY from now; the oldest goes past MAX_ENTRIES."""
        self._kept.pop(key, None)
        self._kept[key] = (self._clock(), value)
        while len(self._kept) > self._max:
            self._kept.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kept)
