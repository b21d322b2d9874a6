"""Boot stages in the farm: record that a device reached a stage of its
network boot (`device_boots`), and read them back for the front ends.

Rules:
- The rules are `vdfarm.farm.boot_stages` (pure); this module only reads
  and writes the row, in the caller's transaction (`record_stage`) or in
  one of its own (`BootStageService`).
- Who reports what: the iPXE route `ipxe` (`IpxeService`), the boot file
  route `kernel` (`kernel_fetched`: a request that names the device's MAC,
  as its script's URLs do, for a file of the version it boots, from the
  address that fetched the script), the session record `streaming`
  (`SessionService.started`), the write-cache report `up` (the first
  report of a used write cache; a device with no write cache on the
  server, private mode, stays at `streaming`).
- Recording a stage never fails what it goes with: `kernel_fetched` raises
  nothing (a boot file is served whether or not its stage is written).
- `boot_view` (pure) is what `device list` / `device show` show: the
  stage, its time, whether it is stuck, and each stage's time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.boot_stages import KERNEL, BootRecord, advance, is_stuck, kernel_counts
from vdfarm.farm.models import BOOT_STAGES, Device, DeviceBoot, Vdisk
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import ServiceError
from vdfarm.service.validation import parse_mac

log = logging.getLogger("vdfarm.boot")

_TIME_COLUMNS = tuple(f"{stage}_at" for stage in BOOT_STAGES)


def record_of(row: DeviceBoot | None) -> BootRecord | None:
    """ROW as a pure BootRecord (None stays None)."""
    if row is None:
        return None
    return BootRecord(
        stage=row.stage,
        stage_at=row.stage_at,
        times=tuple(getattr(row, column) for column in _TIME_COLUMNS),
        client_ip=row.client_ip,
    )


def _write(session: Session, device_id: int, row: DeviceBoot | None, record: BootRecord) -> None:
    if row is None:
        row = DeviceBoot(device_id=device_id)
        session.add(row)
    row.stage, row.stage_at, row.client_ip = record.stage, record.stage_at, record.client_ip
    for column, value in zip(_TIME_COLUMNS, record.times, strict=True):
        setattr(row, column, value)


def record_stage(
    session: Session, device_id: int, stage: str, now: datetime, client_ip: str | None = None
) -> bool:
    """Record in SESSION's transaction that DEVICE_ID reached STAGE at NOW
    (from CLIENT_IP); False when that changes nothing (`advance`).

    Raises ValueError (not a stage).
    """
    row = session.get(DeviceBoot, device_id)
    record = advance(record_of(row), stage, now, client_ip)
    if record is None:
        return False
    _write(session, device_id, row, record)
    return True


def boot_records(session: Session, device_ids: Iterable[int]) -> dict[int, BootRecord]:
    """{device id: its last boot} of those of DEVICE_IDS that have one."""
    ids = list(device_ids)
    if not ids:
        return {}
    rows = session.scalars(select(DeviceBoot).where(DeviceBoot.device_id.in_(ids))).all()
    return {row.device_id: record for row in rows if (record := record_of(row)) is not None}


def boot_view(record: BootRecord | None, now: datetime) -> dict[str, Any] | None:
    """What the front ends show of a device's last boot (None: none recorded):
    {stage, stage_at, stuck, stages: {stage: time or None, in order}}."""
    if record is None:
        return None
    return {
        "stage": record.stage,
        "stage_at": record.stage_at,
        "stuck": is_stuck(record, now),
        "stages": {stage: record.at(stage) for stage in BOOT_STAGES},
    }


class BootStageService:
    """Stages reported by the boot file route."""

    def __init__(self, session: SessionFactory, clock: Clock) -> None:
        self._session = session
        self._clock = clock

    def kernel_fetched(self, mac: str, vdisk: str, client_ip: str | None) -> bool:
        """A boot file of vDisk VDISK was asked for by CLIENT_IP naming the
        device of MAC: record its `kernel` stage if it counts (the device
        boots VDISK and fetched its script from CLIENT_IP, and no more).
        True if recorded. Raises nothing (logs a database failure)."""
        normalised = parse_mac(mac)
        if normalised is None:
            return False
        try:
            with self._session() as session:
                found = session.execute(
                    select(Device.id, DeviceBoot)
                    .join(Vdisk, Vdisk.id == Device.vdisk_id)
                    .join(DeviceBoot, DeviceBoot.device_id == Device.id)
                    .where(Device.mac == normalised, Vdisk.name == vdisk)
                ).first()
                if found is None or not kernel_counts(record_of(found[1]), client_ip):
                    return False
                return record_stage(session, found[0], KERNEL, self._clock())
        except ServiceError as exc:
            log.warning("could not record the kernel stage of %s: %s", normalised, exc)
            return False
