"""Auto-add: register an unknown MAC that asks for its iPXE script as a
new device, as PVS's auto-add does (farm setting `auto_add_vdisk`, off by
default).

Rules:
- The device is named after its MAC (`auto_name`: `pxe-` and its twelve
  hex digits), boots the auto-add vDisk, is marked `auto_added`, and its
  addition is audited (`device.add`, actor `auto-add@<address>`) in the
  same transaction.
- A hostile boot network must not fill the database: the farm holds at
  most `auto_add_limit` auto-added devices (a farm setting, 100 by
  default), and at most AUTO_ADD_PER_MINUTE are added in any minute,
  farm-wide (both counted in the database, so every server applies the
  same caps); past either, Unavailable, saying which, nothing written.
  Deleting auto-added devices makes room again. (The iPXE route's
  per-address rate limit comes first.)
- Only a well-formed MAC (normalised by the caller) gets here; a name
  already taken (a device named like that without this MAC) is Conflict.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import Device, Vdisk
from vdfarm.service.audit import AuditWriter
from vdfarm.service.devices import device_info
from vdfarm.service.errors import Conflict, Unavailable

AUTO_ADD_PER_MINUTE = 10
PREFIX = "pxe-"


def auto_name(mac: str) -> str:
    """The name of the device auto-added for MAC (normalised aa:bb:...)."""
    return PREFIX + mac.replace(":", "")


def auto_add(
    session: Session,
    audit: AuditWriter,
    mac: str,
    vdisk_name: str,
    limit: int,
    now: datetime,
    client_ip: str | None,
) -> Device:
    """Add, in SESSION's transaction, the device of MAC booting VDISK_NAME.

    Raises Unavailable (the vDisk is gone; LIMIT auto-added devices, or
    AUTO_ADD_PER_MINUTE in the last minute, already), Conflict (the name is
    taken).
    """
    vdisk = session.scalars(select(Vdisk).where(Vdisk.name == vdisk_name)).one_or_none()
    if vdisk is None:
        raise Unavailable(f"auto-add vDisk {vdisk_name} does not exist any more")
    added = session.scalar(select(func.count()).select_from(Device).where(Device.auto_added))
    if (added or 0) >= limit:
        raise Unavailable(
            f"unknown MAC {mac}: the farm holds {added} auto-added devices, its limit "
            f"(vdfarm farm set --auto-add-limit N, or delete some)"
        )
    recent = session.scalar(
        select(func.count())
        .select_from(Device)
        .where(Device.auto_added, Device.created_at > now - timedelta(minutes=1))
    )
    if (recent or 0) >= AUTO_ADD_PER_MINUTE:
        raise Unavailable(
            f"unknown MAC {mac}: {AUTO_ADD_PER_MINUTE} devices were auto-added in the "
            "last minute, the most allowed"
        )
    name = auto_name(mac)
    if session.scalar(select(Device.id).where(Device.name == name)) is not None:
        raise Conflict(f"unknown MAC {mac}: a device named {name} exists already")
    device = Device(
        name=name,
        mac=mac,
        vdisk=vdisk,
        device_type="production",
        description=f"auto-added at its first iPXE boot from {client_ip or 'an unknown address'}",
        created_at=now,
        auto_added=True,
    )
    session.add(device)
    session.flush()
    audit.record(
        session,
        actor=f"auto-add@{client_ip or 'unknown'}",
        at=now,
        action="device.add",
        target_type="device",
        target_name=name,
        before=None,
        after=device_info(device),
    )
    return device
