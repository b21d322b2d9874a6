"""The stages of a device's network boot, as pure rules: which stage a new
report moves a boot to, and when a boot is stuck.

Rules (no I/O, no database; `vdfarm.service.boot_stages` applies them):
- The stages, in order: `ipxe` (the device fetched its iPXE script),
  `kernel` (it fetched a boot file its script named), `streaming` (its NBD
  session started), `up` (its first write reached its write cache).
- `ipxe` starts a new boot: every later stage's time is cleared. But a
  boot still at `ipxe` stays the same boot (its time kept, only the
  address updated): a device whose script says "no server, try again"
  fetches it every few seconds, and must still show as stuck.
- Any other stage moves a boot forward only: a report of a stage the boot
  already reached, or one before it, changes nothing (a second boot file,
  an NBD reconnect within the boot, a write after the first). A stage
  reported with no boot on record starts one there (a device booted
  without iPXE: `streaming`, then `up`).
- `kernel` counts only while the boot is at `ipxe` or `kernel`, and only
  from the address that fetched the script (`kernel_counts`): anyone may
  download boot files, so a file request alone never moves a device that
  is not on its way.
- A boot is stuck when it stays in a stage other than `up` for longer than
  STUCK_AFTER (a device that "shows No Server" stays at `ipxe` or
  `kernel`; one whose root never mounts stays at `streaming`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from vdfarm.farm.models import BOOT_STAGES

IPXE, KERNEL, STREAMING, UP = BOOT_STAGES
STUCK_AFTER = timedelta(minutes=1)


@dataclass(frozen=True)
class BootRecord:
    """A device's last boot: its stage, since when, and each stage's time."""

    stage: str
    stage_at: datetime
    times: tuple[datetime | None, ...]  # one per BOOT_STAGES, None: not reached
    client_ip: str | None = None

    def at(self, stage: str) -> datetime | None:
        """When this boot reached STAGE (None: not yet)."""
        return self.times[BOOT_STAGES.index(stage)]


def check_stage(stage: str) -> int:
    """STAGE's position in BOOT_STAGES. Raises ValueError (not a stage)."""
    if stage not in BOOT_STAGES:
        raise ValueError(f"no boot stage {stage!r} (stages: {', '.join(BOOT_STAGES)})")
    return BOOT_STAGES.index(stage)


def advance(
    record: BootRecord | None, stage: str, now: datetime, client_ip: str | None = None
) -> BootRecord | None:
    """RECORD after a report that the device reached STAGE at NOW (from
    CLIENT_IP, kept for `ipxe`); None when the report changes nothing.

    Raises ValueError (not a stage).
    """
    position = check_stage(stage)
    if stage == IPXE and record is not None and record.stage == IPXE:
        return None if record.client_ip == client_ip else replace(record, client_ip=client_ip)
    if stage == IPXE or record is None:
        times: list[datetime | None] = [None] * len(BOOT_STAGES)
        times[position] = now
        return BootRecord(stage, now, tuple(times), client_ip if stage == IPXE else None)
    if position <= check_stage(record.stage):
        return None
    times = list(record.times)
    times[position] = now
    return replace(record, stage=stage, stage_at=now, times=tuple(times))


def kernel_counts(record: BootRecord | None, client_ip: str | None) -> bool:
    """True if a boot file fetched from CLIENT_IP moves RECORD to `kernel`:
    the device fetched its script (and no more) from that very address."""
    return (
        record is not None
        and record.stage in (IPXE, KERNEL)
        and record.client_ip is not None
        and record.client_ip == client_ip
    )


def is_stuck(record: BootRecord | None, now: datetime, after: timedelta = STUCK_AFTER) -> bool:
    """True if RECORD has stayed in a stage other than `up` for longer than AFTER."""
    return record is not None and record.stage != UP and now - record.stage_at > after
