"""Target devices: add, list, show, assign a vDisk, change, delete.

Rules:
- A device is found by its name or by its MAC (any common spelling); MACs are
  stored normalised (aa:bb:cc:dd:ee:ff) and unique.
- Every check runs before anything is written; each change writes its audit
  row in the same transaction.
- A device that holds a vDisk's lock (unexpired) cannot be deleted.
- `list` and `show` say where each device is on its last network boot
  (`boot_stages`): its stage and since when, `stuck` (more than a minute
  in a stage other than `up`), and when the farm last heard of it
  (`last_seen`: its session's last report, or its last boot stage); `show`
  adds every stage's time, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vdfarm.farm.boot_stages import BootRecord
from vdfarm.farm.models import DEVICE_TYPES, Device, DeviceSession, Lock, Server, Vdisk
from vdfarm.service.audit import AuditWriter
from vdfarm.service.boot_stages import boot_records, boot_view
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import Conflict, Invalid, NotFound
from vdfarm.service.exports import find_device
from vdfarm.service.failovers import summary as failover_summary
from vdfarm.service.locks import HELD, lock_state
from vdfarm.service.validation import (
    UNCHANGED,
    cache_limit_bytes,
    check_choice,
    check_description,
    check_name,
    normalise_mac,
)
from vdfarm.service.vdisks import find_vdisk


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the front ends show it."""

    id: int
    name: str
    mac: str | None
    device_type: str
    vdisk: str | None
    description: str
    created_at: datetime
    # Only in `show`: the device's live session ({server, version,
    # connected_at, last_seen, write_cache_used_bytes, write_cache_limit_bytes})
    # or None when it is not connected.
    session: dict[str, Any] | None = None
    # Only in `show`: the failovers its agent reported ({count, last: {at,
    # from, to, pause_ms, retried, reason}}; `failovers.summary`), or None.
    failovers: dict[str, Any] | None = None
    # Its last network boot: the stage reached (None: no boot recorded) and
    # when, whether it is stuck there, and when the farm last heard of it.
    stage: str | None = None
    stage_at: datetime | None = None
    stuck: bool = False
    last_seen: datetime | None = None
    # Only in `show`: each stage's time in that boot, in order (None: not reached).
    boot_stages: dict[str, datetime | None] | None = None
    auto_added: bool = False


def device_info(device: Device) -> DeviceInfo:
    return DeviceInfo(
        id=device.id,
        name=device.name,
        mac=device.mac,
        device_type=device.device_type,
        vdisk=device.vdisk.name if device.vdisk else None,
        description=device.description,
        created_at=device.created_at,
        auto_added=device.auto_added,
    )


def _with_boot(
    info: DeviceInfo, record: BootRecord | None, seen: datetime | None, now: datetime
) -> DeviceInfo:
    """INFO with its last boot (RECORD) and the last time the farm heard of it."""
    view = boot_view(record, now)
    if view is None:
        return replace(info, last_seen=seen)
    heard = [t for t in (seen, *view["stages"].values()) if t is not None]
    return replace(
        info,
        stage=view["stage"],
        stage_at=view["stage_at"],
        stuck=view["stuck"],
        last_seen=max(heard) if heard else None,
    )


def _seen(session: Session, device_ids: list[int]) -> dict[int, datetime]:
    """{device id: its session's last_seen} of those connected."""
    if not device_ids:
        return {}
    rows = session.execute(
        select(DeviceSession.device_id, DeviceSession.last_seen).where(
            DeviceSession.device_id.in_(device_ids)
        )
    ).all()
    return {row.device_id: row.last_seen for row in rows}


def _live_session(session: Session, device: Device) -> dict[str, Any] | None:
    row = session.execute(
        select(DeviceSession, Server.name, Vdisk)
        .join(Server, DeviceSession.server_id == Server.id)
        .join(Vdisk, DeviceSession.vdisk_id == Vdisk.id)
        .where(DeviceSession.device_id == device.id)
    ).one_or_none()
    if row is None:
        return None
    live, server_name, vdisk = row
    return {
        "server": server_name,
        "vdisk": vdisk.name,
        "version": live.version,
        "connected_at": live.connected_at,
        "last_seen": live.last_seen,
        "write_cache_used_bytes": live.cache_used_bytes,
        "write_cache_limit_bytes": cache_limit_bytes(vdisk.write_cache_limit_mb),
    }


def get_device(session: Session, name_or_mac: str) -> Device:
    """The device called NAME_OR_MAC (name or MAC). Raises NotFound."""
    device = find_device(session, name_or_mac)
    if device is None:
        raise NotFound(f"no device named {name_or_mac}")
    return device


def _check_mac_free(session: Session, mac: str, device_id: int | None) -> None:
    owner = session.scalars(select(Device).where(Device.mac == mac)).one_or_none()
    if owner is not None and owner.id != device_id:
        raise Conflict(f"MAC {mac} is already used by device {owner.name}")


class DeviceService:
    """Device management for every front end."""

    def __init__(self, session: SessionFactory, clock: Clock, audit: AuditWriter) -> None:
        self._session = session
        self._clock = clock
        self._audit_writer = audit

    def _audit(
        self, session: Session, action: str, name: str, before: Any, after: Any, actor: str | None
    ) -> None:
        self._audit_writer.record(
            session,
            actor=actor,
            action=action,
            target_type="device",
            target_name=name,
            before=before,
            after=after,
        )

    def add(
        self,
        name: str,
        *,
        mac: str | None = None,
        vdisk: str | None = None,
        device_type: str = "production",
        description: str = "",
        actor: str | None = None,
    ) -> DeviceInfo:
        """Add device NAME, optionally with a MAC and an assigned vDisk.

        Raises Invalid (bad name, MAC, type), NotFound (no such vDisk),
        Conflict (name or MAC taken), Unavailable.
        """
        check_name("device", name)
        mac = normalise_mac(mac) if mac is not None else None
        check_choice("device type", device_type, DEVICE_TYPES)
        check_description(description)
        with self._session() as session:
            if session.scalars(select(Device.id).where(Device.name == name)).first():
                raise Conflict(f"device {name} already exists")
            if mac is not None:
                _check_mac_free(session, mac, None)
            vdisk_row = find_vdisk(session, vdisk) if vdisk is not None else None
            device = Device(
                name=name,
                mac=mac,
                vdisk=vdisk_row,
                device_type=device_type,
                description=description,
                created_at=self._clock(),
            )
            session.add(device)
            session.flush()
            info = device_info(device)
            self._audit(session, "device.add", name, None, info, actor)
            return info

    def list(self) -> list[DeviceInfo]:
        """Every device, by name. Raises Unavailable."""
        now = self._clock()
        with self._session() as session:
            rows = session.scalars(select(Device).order_by(Device.name)).all()
            ids = [d.id for d in rows]
            boots, seen = boot_records(session, ids), _seen(session, ids)
            return [_with_boot(device_info(d), boots.get(d.id), seen.get(d.id), now) for d in rows]

    def show(self, name_or_mac: str) -> DeviceInfo:
        """The device called NAME_OR_MAC, with its live session if it is
        connected. Raises NotFound, Unavailable."""
        now = self._clock()
        with self._session() as session:
            device = get_device(session, name_or_mac)
            record = boot_records(session, [device.id]).get(device.id)
            info = _with_boot(
                device_info(device), record, _seen(session, [device.id]).get(device.id), now
            )
            view = boot_view(record, now)
            return replace(
                info,
                session=_live_session(session, device),
                failovers=failover_summary(session, device.name),
                boot_stages=view["stages"] if view is not None else None,
            )

    def assign(self, name_or_mac: str, vdisk: str | None, actor: str | None = None) -> DeviceInfo:
        """Assign vDisk VDISK to the device (None: no vDisk). Takes effect at its next connect.

        Raises NotFound (device or vDisk), Unavailable.
        """
        with self._session() as session:
            device = get_device(session, name_or_mac)
            before = device_info(device)
            device.vdisk = find_vdisk(session, vdisk) if vdisk is not None else None
            session.flush()
            after = device_info(device)
            self._audit(session, "device.assign", device.name, before, after, actor)
            return after

    def set(
        self,
        name_or_mac: str,
        *,
        device_type: str | None = None,
        mac: Any = UNCHANGED,
        description: str | None = None,
        actor: str | None = None,
    ) -> DeviceInfo:
        """Change the type, MAC (None clears it) or description of a device.

        Raises Invalid (bad value, nothing to change), NotFound, Conflict
        (MAC taken), Unavailable.
        """
        changes: dict[str, Any] = {}
        if device_type is not None:
            changes["device_type"] = check_choice("device type", device_type, DEVICE_TYPES)
        if mac is not UNCHANGED:
            changes["mac"] = normalise_mac(mac) if mac is not None else None
        if description is not None:
            changes["description"] = check_description(description)
        if not changes:
            raise Invalid("nothing to change: give a type, MAC or description")
        with self._session() as session:
            device = get_device(session, name_or_mac)
            if changes.get("mac") is not None:
                _check_mac_free(session, changes["mac"], device.id)
            before = device_info(device)
            for column, value in changes.items():
                setattr(device, column, value)
            session.flush()
            after = device_info(device)
            self._audit(session, "device.set", device.name, before, after, actor)
            return after

    def delete(self, name_or_mac: str, actor: str | None = None) -> DeviceInfo:
        """Remove a device; returns it as it was.

        Raises NotFound, Conflict (it holds a vDisk lock), Unavailable.
        """
        now = self._clock()
        with self._session() as session:
            device = get_device(session, name_or_mac)
            held = session.scalars(select(Lock).where(Lock.holder_device_id == device.id)).all()
            for lock in held:
                if lock_state(lock, now) == HELD:
                    raise Conflict(
                        f"device {device.name} holds the lock of vDisk {lock.vdisk.name}; "
                        f"release it first (vdfarm lock release {lock.vdisk.name})"
                    )
            before = device_info(device)
            session.execute(
                update(Lock)
                .where(Lock.holder_device_id == device.id)
                .values(holder_device_id=None, server_id=None, lease_expires_at=None),
                execution_options={"synchronize_session": False},
            )
            session.delete(device)
            self._audit(session, "device.delete", before.name, before, None, actor)
            return before
