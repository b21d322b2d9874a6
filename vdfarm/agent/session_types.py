"""The session's parts other modules meet: its options, the records of
its failovers and moves, and what it needs of a local connection and of
the device cache (protocols, so vdfarm.agent.session imports neither).

Rules: data and interfaces only, no I/O; times in records are wall time
(UTC, ISO 8601) for people and monotonic seconds for arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from vdfarm.agent.upstream import Payload, Upstream

FIRST_RETRY_S = 0.2
MAX_RETRY_S = 5.0


class Client(Protocol):
    """A local connection the session answers (vdfarm.agent.local)."""

    def answer(
        self, cookie: int, cmd: int, offset: int, length: int, error: int, payload: Payload | None
    ) -> None:
        """Queue the reply of request COOKIE (a READ's data: PAYLOAD's buffers)."""

    def flush(self) -> None:
        """Write the queued replies."""


# What a request sent by the fast path carries to its reply handler.
Context = tuple[Client, int, int, int, int, int, Any, Upstream]
# (client, cookie, command, flags, offset, length, data, upstream)


class WriteCache(Protocol):
    """The device-side write cache (vdfarm.agent.cache builds it)."""

    def all_upstream(self, offset: int, length: int) -> bool: ...

    def needs_fill(self, offset: int, length: int) -> list[tuple[int, int]]: ...

    def write(self, offset: int, data: bytes, fills: dict[int, bytes]) -> None: ...

    def zero(self, offset: int, length: int, fills: dict[int, bytes]) -> None: ...

    def read_plan(self, offset: int, length: int) -> list[tuple[int, int, bytes | None]]: ...

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SessionOptions:
    io_timeout: float = 1.0  # a request unanswered this long fails its server
    give_up: float | None = None  # seconds of outage before waiting requests get EIO
    first_retry: float = FIRST_RETRY_S
    max_retry: float = MAX_RETRY_S


@dataclass
class FailoverRecord:
    """One failover; `pause_ms` is None until the first good reply after it."""

    at: str  # wall time of the detection (UTC, ISO 8601)
    from_server: str
    to_server: str | None
    reason: str
    pause_ms: int | None
    retried: int
    stalled_from: float  # monotonic: the oldest request that waited, or the detection

    def plain(self) -> dict[str, Any]:
        out = asdict(self)
        del out["stalled_from"]
        return out


@dataclass
class MoveRecord:
    """One move order followed: the switch from one server to another."""

    at: str  # wall time of the switch (UTC, ISO 8601)
    from_server: str
    to_server: str
    switch_ms: int  # from the order's first sign (a probe's ESHUTDOWN) to the switch
    retried: int  # requests answered ESHUTDOWN and sent again to the new server

    def plain(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    """Now, as the records say it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
