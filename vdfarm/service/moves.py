"""Rebalance runs and the device moves they order.

Rules:
- `rebalance` reads the farm (servers, verified copies, sessions), asks the
  pure planner (`vdfarm.farm.rebalance.plan`) and, when applied, records
  each move as an order on the device's session (`move_to_server_id`,
  `move_requested_at`) plus one `device.move` audit row — in one transaction,
  and only if the session is still where the plan saw it. Applied runs take
  the farm settings row FOR UPDATE first, so two (an admin's and the auto
  runner's) never plan from the same snapshot.
- A session with a pending order counts on its destination and is not
  planned again. A pinned session (`version_rules.is_pinned`: it writes to
  its vDisk, or its write cache on its server holds data; a device-side
  cache type never pins) is never planned;
  the stream server checks again, against its live write cache, before it
  carries an order out. The order is carried out by the stream server the
  device is connected to: it polls `pending_moves`, asks the device to reconnect to
  the new server, and the device's new session replaces the old row (order
  and all). `cancel_move` drops an order that cannot be carried out.
- `auto_rebalance` is the periodic mode: applied, with the auto guards, and
  run only by the lowest-id up server so a farm runs one at a time.
- `MoveService` is what the front ends call (`farm.moves`); the module
  functions of the same names take anything that has one (the stream
  server calls `pending_moves(farm)`, `cancel_move(farm, id)`,
  `auto_rebalance(farm)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vdfarm.farm import rebalance as planner
from vdfarm.farm.models import (
    Device,
    DeviceSession,
    FarmSettings,
    Server,
    StoreVersion,
    Vdisk,
    VdiskVersion,
)
from vdfarm.farm.placement import IpAddress, is_up
from vdfarm.service import version_rules as rules
from vdfarm.service.audit import AuditWriter
from vdfarm.service.deps import Clock, SessionFactory, ThisServer, changed_rows
from vdfarm.service.errors import Invalid
from vdfarm.service.login import ServerEndpoint, endpoint_of, parse_address
from vdfarm.service.settings import SettingsService

MAX_TRIGGER_PCT = planner.MAX_TRIGGER_PCT


@dataclass(frozen=True)
class RebalanceResult:
    """A rebalance run: its moves, the average it aimed at, and whether it was applied."""

    moves: tuple[planner.Move, ...]
    average: float
    trigger_pct: float
    auto: bool
    applied: bool
    skipped: str | None = None


@dataclass(frozen=True)
class MoveOrder:
    """A device this server must ask to reconnect to another server."""

    device_id: int
    device_name: str
    to_server: ServerEndpoint
    requested_at: datetime | None


def _address(text: str | None) -> IpAddress | None:
    try:
        return parse_address(text)
    except Invalid:
        return None


def farm_state(
    session: Session, now: datetime, settings: SettingsService
) -> tuple[list[planner.ServerState], list[planner.SessionState]]:
    """The planner's view of the farm at NOW."""
    timeout = settings.heartbeat_timeout()
    held: dict[int, set[tuple[str, int]]] = {}
    query = select(StoreVersion.server_id, Vdisk.name, StoreVersion.version).join(
        Vdisk, Vdisk.id == StoreVersion.vdisk_id
    )
    for server_id, vdisk, version in session.execute(query).all():
        held.setdefault(server_id, set()).add((vdisk, version))
    servers = [
        planner.ServerState(
            id=row.id,
            name=row.name,
            up=is_up(row.last_heartbeat, now, timeout),
            power_rating=row.power_rating,
            max_booting=row.max_booting,
            subnet=row.subnet,
            versions=frozenset(held.get(row.id, ())),
        )
        for row in session.scalars(select(Server)).all()
    ]
    up = {s.id for s in servers if s.up}
    cutoff = settings.boot_cutoff(now)
    rows = session.execute(
        select(
            DeviceSession,
            Device.name,
            Device.device_type,
            Vdisk.name,
            Vdisk.access_mode,
            Vdisk.subnet_affinity,
            VdiskVersion.access,
            Vdisk.write_cache_type,
        )
        .join(Device, Device.id == DeviceSession.device_id)
        .join(Vdisk, Vdisk.id == DeviceSession.vdisk_id)
        .outerjoin(
            VdiskVersion,
            (VdiskVersion.vdisk_id == DeviceSession.vdisk_id)
            & (VdiskVersion.number == DeviceSession.version),
        )
    ).all()
    sessions = []
    for row, device_name, device_type, vdisk_name, access_mode, affinity, access, cache in rows:
        moving_to = row.move_to_server_id if row.move_to_server_id in up else None
        sessions.append(
            planner.SessionState(
                device_id=row.device_id,
                device_name=device_name,
                server_id=row.server_id if moving_to is None else moving_to,
                vdisk=vdisk_name,
                version=row.version,
                booting=row.connected_at > cutoff,
                moving=moving_to is not None,
                pinned=rules.is_pinned(
                    access_mode,
                    device_type,
                    # a version gone from the rows: as if open (the safe side)
                    access or rules.MAINTENANCE,
                    row.cache_used_bytes,
                    cache,
                ),
                affinity=affinity,
                address=_address(row.client_ip),
            )
        )
    return servers, sessions


def check_trigger(trigger_pct: float) -> float:
    """TRIGGER_PCT if it is a percentage the planner takes. Raises Invalid."""
    if not isinstance(trigger_pct, int | float) or not 0 <= trigger_pct <= MAX_TRIGGER_PCT:
        raise Invalid(f"invalid trigger {trigger_pct!r}: give a percentage 0-{MAX_TRIGGER_PCT:g}")
    return float(trigger_pct)


class MoveService:
    """Rebalance runs, and the move orders they leave for the stream servers."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        here: ThisServer,
        settings: SettingsService,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._here = here
        self._settings = settings

    def rebalance(
        self,
        *,
        apply: bool,
        trigger_pct: float | None = None,
        auto: bool = False,
        actor: str | None = None,
    ) -> RebalanceResult:
        """Plan (and if APPLY, order) the moves that bring every up server within
        TRIGGER_PCT % (default: the farm's setting) of the weighted average.
        AUTO applies the auto-mode guards and leaves booting devices alone.

        Raises Invalid (bad trigger), Unavailable (DB down).
        """
        if trigger_pct is None:
            trigger_pct = self._settings.current().rebalance_trigger_pct
        trigger = check_trigger(trigger_pct)
        with self._session() as session:
            if apply:  # one applied run at a time (PostgreSQL; SQLite has one writer anyway)
                session.execute(
                    select(FarmSettings.id).where(FarmSettings.id == 1).with_for_update()
                )
            servers, sessions = farm_state(session, self._clock(), self._settings)
            average = planner.weighted_average(servers, sessions)
            skipped = planner.auto_guard(servers, sessions) if auto else None
            moves = [] if skipped else planner.plan(servers, sessions, trigger, auto=auto)
            if apply and moves:
                moves = self._order_moves(session, moves, actor)
        return RebalanceResult(
            moves=tuple(moves),
            average=average,
            trigger_pct=trigger,
            auto=auto,
            applied=apply,
            skipped=skipped,
        )

    def _order_moves(
        self, session: Session, moves: list[planner.Move], actor: str | None
    ) -> list[planner.Move]:
        """Order each move whose session is still where the plan saw it (compare
        and set); audit the ordered ones. Updates first, audit rows after, so the
        session flushes once."""
        now = self._clock()
        connection = session.connection()
        ordered = []
        for move in moves:
            result = connection.execute(
                update(DeviceSession)
                .where(
                    DeviceSession.device_id == move.device_id,
                    DeviceSession.server_id == move.from_server_id,
                    DeviceSession.move_to_server_id.is_(None),
                )
                .values(move_to_server_id=move.to_server_id, move_requested_at=now)
            )
            if changed_rows(result) == 1:
                ordered.append(move)
        for move in ordered:
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="device.move",
                target_type="device",
                target_name=move.device_name,
                before={"server": move.from_server},
                after={"server": move.to_server},
            )
        return ordered

    def auto_rebalance(self, trigger_pct: float | None = None) -> RebalanceResult | None:
        """The periodic automatic rebalance: None unless this server is the
        lowest-id up server (one runner per farm); else an applied auto run.

        Raises Unavailable (DB down).
        """
        now = self._clock()
        with self._session() as session:
            beats = session.execute(
                select(Server.id, Server.last_heartbeat).order_by(Server.id)
            ).all()
        timeout = self._settings.heartbeat_timeout()
        runner = next((i for i, beat in beats if is_up(beat, now, timeout)), None)
        if runner != self._here.id:
            return None
        return self.rebalance(
            apply=True, trigger_pct=trigger_pct, auto=True, actor=f"server:{self._here.name}"
        )

    def pending_moves(self) -> list[MoveOrder]:
        """The move orders for devices connected to THIS server, by device name.

        Raises Unavailable (DB down).
        """
        query = (
            select(DeviceSession.device_id, Device.name, Server, DeviceSession.move_requested_at)
            .join(Device, Device.id == DeviceSession.device_id)
            .join(Server, Server.id == DeviceSession.move_to_server_id)
            .where(DeviceSession.server_id == self._here.id)
            .order_by(Device.name)
        )
        with self._session() as session:
            return [
                MoveOrder(device_id, name, endpoint_of(server), requested_at)
                for device_id, name, server, requested_at in session.execute(query).all()
            ]

    def cancel_move(self, device_id: int) -> bool:
        """Drop the move order of DEVICE_ID's session on this server; False if none.

        Raises Unavailable (DB down).
        """
        with self._session() as session:
            result = session.execute(
                update(DeviceSession)
                .where(
                    DeviceSession.device_id == device_id,
                    DeviceSession.server_id == self._here.id,
                    DeviceSession.move_to_server_id.is_not(None),
                )
                .values(move_to_server_id=None, move_requested_at=None),
                execution_options={"synchronize_session": False},
            )
            return changed_rows(result) == 1


class HasMoves(Protocol):
    """A holder of the move service (the `Farm` façade)."""

    moves: MoveService


def rebalance(
    farm: HasMoves,
    *,
    apply: bool,
    trigger_pct: float | None = None,
    auto: bool = False,
    actor: str | None = None,
) -> RebalanceResult:
    """`farm.moves.rebalance(...)` (see `MoveService.rebalance`). Raises Invalid, Unavailable."""
    return farm.moves.rebalance(apply=apply, trigger_pct=trigger_pct, auto=auto, actor=actor)


def auto_rebalance(farm: HasMoves, trigger_pct: float | None = None) -> RebalanceResult | None:
    """`farm.moves.auto_rebalance(...)` (see `MoveService.auto_rebalance`). Raises Unavailable."""
    return farm.moves.auto_rebalance(trigger_pct)


def pending_moves(farm: HasMoves) -> list[MoveOrder]:
    """`farm.moves.pending_moves()` (see `MoveService.pending_moves`). Raises Unavailable."""
    return farm.moves.pending_moves()


def cancel_move(farm: HasMoves, device_id: int) -> bool:
    """`farm.moves.cancel_move(...)` (see `MoveService.cancel_move`). Raises Unavailable."""
    return farm.moves.cancel_move(device_id)
