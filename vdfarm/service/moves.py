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
  planned again. A pinned session (`is_pinned`: it would lose state by
  moving) is never planned; the stream server checks again, against its
  live write cache, before it carries an order out. The order is carried out by the stream server the device
  is connected to: it polls `pending_moves`, asks the device to reconnect to
  the new server, and the device's new session replaces the old row (order
  and all). `cancel_move` drops an order that cannot be carried out.
- `auto_rebalance` is the periodic mode: applied, with the auto guards, and
  run only by the lowest-id up server so a farm runs one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vdfarm.farm import rebalance as planner
from vdfarm.farm.models import Device, DeviceSession, FarmSettings, Server, StoreVersion, Vdisk
from vdfarm.farm.placement import IpAddress, is_up
from vdfarm.service import audit
from vdfarm.service.errors import Invalid
from vdfarm.service.login import ServerEndpoint, endpoint_of, parse_address

if TYPE_CHECKING:
    from vdfarm.service.context import Farm

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
    session: Session, farm: Farm
) -> tuple[list[planner.ServerState], list[planner.SessionState]]:
    """The planner's view of the farm now."""
    now = farm.now()
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
            up=is_up(row.last_heartbeat, now, farm.servers.timeout()),
            power_rating=row.power_rating,
            max_booting=row.max_booting,
            subnet=row.subnet,
            versions=frozenset(held.get(row.id, ())),
        )
        for row in session.scalars(select(Server)).all()
    ]
    up = {s.id for s in servers if s.up}
    cutoff = farm.servers.boot_cutoff(now)
    rows = session.execute(
        select(
            DeviceSession,
            Device.name,
            Device.device_type,
            Vdisk.name,
            Vdisk.access_mode,
            Vdisk.subnet_affinity,
        )
        .join(Device, Device.id == DeviceSession.device_id)
        .join(Vdisk, Vdisk.id == DeviceSession.vdisk_id)
    ).all()
    sessions = []
    for row, device_name, device_type, vdisk_name, access_mode, affinity in rows:
        moving = row.move_to_server_id is not None and row.move_to_server_id in up
        sessions.append(
            planner.SessionState(
                device_id=row.device_id,
                device_name=device_name,
                server_id=row.move_to_server_id if moving else row.server_id,
                vdisk=vdisk_name,
                version=row.version,
                booting=row.connected_at > cutoff,
                moving=moving,
                pinned=is_pinned(access_mode, device_type, row.cache_used_bytes),
                affinity=affinity,
                address=_address(row.client_ip),
            )
        )
    return servers, sessions


def is_pinned(access_mode: str, device_type: str, cache_used_bytes: int | None) -> bool:
    """True if a device would lose state by reconnecting to another server:
    a private vDisk or a maintenance boot (one writer, on this server's
    copy), or a write cache on its server that holds data. (Write caches on
    the device itself travel with it: that is the agent's job.)"""
    return access_mode == "private" or device_type == "maintenance" or bool(cache_used_bytes)


def check_trigger(trigger_pct: float) -> float:
    """TRIGGER_PCT if it is a percentage the planner takes. Raises Invalid."""
    if not isinstance(trigger_pct, int | float) or not 0 <= trigger_pct <= MAX_TRIGGER_PCT:
        raise Invalid(f"invalid trigger {trigger_pct!r}: give a percentage 0-{MAX_TRIGGER_PCT:g}")
    return float(trigger_pct)


def rebalance(
    farm: Farm,
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
        trigger_pct = farm.settings.current().rebalance_trigger_pct
    trigger = check_trigger(trigger_pct)
    with farm.session() as session:
        if apply:  # one applied run at a time (PostgreSQL; SQLite has one writer anyway)
            session.execute(select(FarmSettings.id).where(FarmSettings.id == 1).with_for_update())
        servers, sessions = farm_state(session, farm)
        average = planner.weighted_average(servers, sessions)
        skipped = planner.auto_guard(servers, sessions) if auto else None
        moves = [] if skipped else planner.plan(servers, sessions, trigger, auto=auto)
        if apply and moves:
            moves = _order_moves(session, farm, moves, actor or farm.actor)
    return RebalanceResult(
        moves=tuple(moves),
        average=average,
        trigger_pct=trigger,
        auto=auto,
        applied=apply,
        skipped=skipped,
    )


def _order_moves(
    session: Session, farm: Farm, moves: list[planner.Move], actor: str
) -> list[planner.Move]:
    """Order each move whose session is still where the plan saw it (compare
    and set); audit the ordered ones. Updates first, audit rows after, so the
    session flushes once."""
    now = farm.now()
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
        if result.rowcount == 1:
            ordered.append(move)
    for move in ordered:
        audit.record(
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


def auto_rebalance(farm: Farm, trigger_pct: float | None = None) -> RebalanceResult | None:
    """The periodic automatic rebalance: None unless this server is the
    lowest-id up server (one runner per farm); else an applied auto run.

    Raises Unavailable (DB down).
    """
    now = farm.now()
    with farm.session() as session:
        beats = session.execute(select(Server.id, Server.last_heartbeat).order_by(Server.id)).all()
    runner = next((i for i, beat in beats if is_up(beat, now, farm.servers.timeout())), None)
    if runner != farm.server_id:
        return None
    return rebalance(
        farm, apply=True, trigger_pct=trigger_pct, auto=True, actor=f"server:{farm.server_name}"
    )


def pending_moves(farm: Farm) -> list[MoveOrder]:
    """The move orders for devices connected to THIS server, by device name.

    Raises Unavailable (DB down).
    """
    query = (
        select(DeviceSession.device_id, Device.name, Server, DeviceSession.move_requested_at)
        .join(Device, Device.id == DeviceSession.device_id)
        .join(Server, Server.id == DeviceSession.move_to_server_id)
        .where(DeviceSession.server_id == farm.server_id)
        .order_by(Device.name)
    )
    with farm.session() as session:
        return [
            MoveOrder(device_id, name, endpoint_of(server), requested_at)
            for device_id, name, server, requested_at in session.execute(query).all()
        ]


def cancel_move(farm: Farm, device_id: int) -> bool:
    """Drop the move order of DEVICE_ID's session on this server; False if none.

    Raises Unavailable (DB down).
    """
    with farm.session() as session:
        result = session.execute(
            update(DeviceSession)
            .where(
                DeviceSession.device_id == device_id,
                DeviceSession.server_id == farm.server_id,
                DeviceSession.move_to_server_id.is_not(None),
            )
            .values(move_to_server_id=None, move_requested_at=None),
            execution_options={"synchronize_session": False},
        )
        return result.rowcount == 1
