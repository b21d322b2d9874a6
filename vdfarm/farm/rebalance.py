"""Rebalance planning: which connected devices to move to which server.

Rules (pure: no database, no I/O, no clock):
- Only up servers count. The weighted average is (devices on up servers) /
  (their total power rating); a server's *target* is average x its rating.
- A server is *within* the trigger when its device count is within
  `trigger_pct` % of its target, or less than one device away from it (whole
  devices cannot do better).
- A move takes one session from server S to server D only if it brings the
  farm closer to balance (D's excess + 1 < S's excess, so every move strictly
  lowers the sum of squared excesses and planning ends), only if it brings a
  server that is not within the trigger towards its target (S above its
  target or D below it — never deeper into the wrong side: a device moved
  onto an overloaded D cannot move again in the same plan), and only if D may
  serve the device: D is up, has a rating > 0, holds the (vDisk, version) the
  device runs, respects the vDisk's subnet affinity (`fixed`: D's subnet
  contains the device's address — or, address unknown, D has the same
  non-null subnet as S; `best-effort`: never out of the device's subnet
  when S is in it) and stays below its max-booting limit (a moved device
  boots again there).
- Devices already being moved, pinned (their state would not survive a
  reconnect elsewhere: private mode, maintenance, or a write cache on their
  server that holds data) or on down servers never move. Booting devices
  move only in a manual run (the admin asked; a pinned-free device loses
  nothing by reading the rest of its boot from another server); auto mode
  leaves them alone.
- Planning stops when every up server is within the trigger, or when no
  allowed move helps (then the plan is the best it can do).
- Auto mode (`auto=True`) plans nothing for farms of fewer than 5 devices per
  up server on average, nor while more than 20 % of a server's devices boot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vdfarm.farm.placement import (
    AFFINITY_BEST_EFFORT,
    AFFINITY_FIXED,
    IpAddress,
    VersionKey,
    in_subnet,
)

DEFAULT_TRIGGER_PCT = 25.0
MAX_TRIGGER_PCT = 1000.0
AUTO_MIN_DEVICES_PER_SERVER = 5
AUTO_MAX_BOOTING_FRACTION = 0.20


@dataclass(frozen=True)
class ServerState:
    """A server as the planner sees it (`up` is decided by the caller)."""

    id: int
    name: str
    up: bool
    power_rating: float = 1.0
    max_booting: int = 500
    subnet: str | None = None
    versions: frozenset[VersionKey] = frozenset()


@dataclass(frozen=True)
class SessionState:
    """A connected device: where it is, what it runs, whether it may move."""

    device_id: int
    device_name: str
    server_id: int
    vdisk: str
    version: int
    booting: bool = False
    moving: bool = False
    pinned: bool = False
    affinity: str = "none"
    address: IpAddress | None = None

    @property
    def key(self) -> VersionKey:
        return (self.vdisk, self.version)


@dataclass(frozen=True)
class Move:
    """Ask DEVICE to reconnect from one server to another."""

    device_id: int
    device_name: str
    from_server: str
    to_server: str
    from_server_id: int
    to_server_id: int


def weighted_average(servers: Sequence[ServerState], sessions: Sequence[SessionState]) -> float:
    """Devices per unit of power over the up servers (0 if there is no power)."""
    up = {s.id: s for s in servers if s.up}
    power = sum(max(s.power_rating, 0.0) for s in up.values())
    count = sum(1 for x in sessions if x.server_id in up)
    return count / power if power > 0 else 0.0


def within(connected: int, target: float, trigger_pct: float) -> bool:
    """True if CONNECTED is within TRIGGER_PCT % of TARGET (or under one device off)."""
    gap = abs(connected - target)
    return gap < 1 or gap <= target * trigger_pct / 100


def auto_guard(servers: Sequence[ServerState], sessions: Sequence[SessionState]) -> str | None:
    """Why auto mode must not rebalance now, or None if it may."""
    up = [s for s in servers if s.up]
    if not up:
        return "no server is up"
    counts = {s.id: 0 for s in up}
    booting = {s.id: 0 for s in up}
    for session in sessions:
        if session.server_id in counts:
            counts[session.server_id] += 1
            booting[session.server_id] += session.booting
    if sum(counts.values()) < AUTO_MIN_DEVICES_PER_SERVER * len(up):
        return f"fewer than {AUTO_MIN_DEVICES_PER_SERVER} devices per up server on average"
    for server in sorted(up, key=lambda s: s.name):
        if booting[server.id] > AUTO_MAX_BOOTING_FRACTION * counts[server.id]:
            return (
                f"more than {AUTO_MAX_BOOTING_FRACTION:.0%} of the devices of server "
                f"{server.name} are booting"
            )
    return None


def may_serve(session: SessionState, source: ServerState, target: ServerState) -> bool:
    """True if TARGET may take SESSION away from SOURCE (version, affinity)."""
    if target.id == source.id or not target.up or target.power_rating <= 0:
        return False
    if session.key not in target.versions:
        return False
    if session.affinity == AFFINITY_FIXED:
        if session.address is not None:
            return in_subnet(session.address, target.subnet)
        return target.subnet is not None and target.subnet == source.subnet
    if session.affinity == AFFINITY_BEST_EFFORT and session.address is not None:
        return in_subnet(session.address, target.subnet) or not in_subnet(
            session.address, source.subnet
        )
    return True


class _Planner:
    """The mutable state of one planning run."""

    def __init__(
        self,
        servers: Sequence[ServerState],
        sessions: Sequence[SessionState],
        trigger_pct: float,
        move_booting: bool,
    ) -> None:
        self.trigger_pct = trigger_pct
        self.up = {s.id: s for s in sorted(servers, key=lambda s: (s.name, s.id)) if s.up}
        average = weighted_average(servers, sessions)
        self.target = {i: average * max(s.power_rating, 0.0) for i, s in self.up.items()}
        self.count = {i: 0 for i in self.up}
        self.booting = {i: 0 for i in self.up}
        self.movable: dict[int, list[SessionState]] = {i: [] for i in self.up}
        for session in sorted(sessions, key=lambda x: (x.device_name, x.device_id)):
            if session.server_id not in self.up:
                continue
            self.count[session.server_id] += 1
            self.booting[session.server_id] += session.booting
            if not (session.moving or session.pinned or (session.booting and not move_booting)):
                self.movable[session.server_id].append(session)

    def excess(self, server_id: int) -> float:
        return self.count[server_id] - self.target[server_id]

    def unbalanced(self, server_id: int) -> bool:
        return not within(self.count[server_id], self.target[server_id], self.trigger_pct)

    def balanced(self) -> bool:
        return not any(self.unbalanced(i) for i in self.up)

    def over(self, server_id: int) -> bool:
        return self.excess(server_id) > 0 and self.unbalanced(server_id)

    def under(self, server_id: int) -> bool:
        return self.excess(server_id) < 0 and self.unbalanced(server_id)

    def next_move(self) -> Move | None:
        sources = sorted(self.up, key=lambda i: -self.excess(i))
        targets = sorted(self.up, key=self.excess)
        for source_id in sources:
            for target_id in targets:
                if self.excess(target_id) + 1 >= self.excess(source_id):
                    break
                if not (self.over(source_id) or self.under(target_id)):
                    continue
                move = self._move_between(source_id, target_id)
                if move is not None:
                    return move
        return None

    def _move_between(self, source_id: int, target_id: int) -> Move | None:
        target = self.up[target_id]
        if self.booting[target_id] >= target.max_booting:
            return None
        source = self.up[source_id]
        for index, session in enumerate(self.movable[source_id]):
            if may_serve(session, source, target):
                del self.movable[source_id][index]
                self.count[source_id] -= 1
                self.count[target_id] += 1
                self.booting[target_id] += 1
                return Move(
                    session.device_id,
                    session.device_name,
                    source.name,
                    target.name,
                    source_id,
                    target_id,
                )
        return None


def plan(
    servers: Sequence[ServerState],
    sessions: Sequence[SessionState],
    trigger_pct: float = DEFAULT_TRIGGER_PCT,
    auto: bool = False,
) -> list[Move]:
    """The moves that bring every up server within TRIGGER_PCT % of the
    weighted average (as far as the rules allow), in the order to make them.

    Raises ValueError for a negative TRIGGER_PCT.
    """
    if trigger_pct < 0:
        raise ValueError(f"trigger percentage must be >= 0, not {trigger_pct}")
    if auto and auto_guard(servers, sessions) is not None:
        return []
    planner = _Planner(servers, sessions, trigger_pct, move_booting=not auto)
    moves: list[Move] = []
    while not planner.balanced():
        move = planner.next_move()
        if move is None:
            break
        moves.append(move)
    return moves
