"""Farm settings: what every server must agree on, in one database row.

Rules:
- The heartbeat timeout (a server is down when its heartbeat is older), the
  boot phase (a device counts as booting that long after it connected), the
  rebalance trigger percentage and the audit retention (days; 0 keeps the
  audit forever; `AuditService.prune` enforces it) live in `farm_settings`
  (one row), so every server and console computes them alike.
- `current()` is read on hot paths (every login, list, rebalance), so each
  process keeps what it read for `CACHE_SECONDS`: a change reaches every
  server within that time. While the database is away the last value read
  (or the defaults) stands.
- `change()` validates every value first, then writes and audits
  (`farm.set`, before/after) in one transaction.
- Auto-add (off by default): `auto_add_vdisk` names the vDisk an unknown
  MAC asking for its iPXE script is registered with (`IpxeService`); ""
  turns it off; a vDisk that is deleted turns it off (the row's foreign
  key). `auto_add_limit` caps how many auto-added devices the farm holds.
- What the settings mean is answered here once: `heartbeat_timeout()` (how
  old a heartbeat may be for its server to be up) and `boot_cutoff(now)`
  (sessions connected after it are booting), for every service that asks.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from vdfarm.farm.models import DEFAULT_AUTO_ADD_LIMIT, FarmSettings, Vdisk
from vdfarm.farm.placement import DEFAULT_TIMEOUT
from vdfarm.farm.rebalance import DEFAULT_TRIGGER_PCT, MAX_TRIGGER_PCT
from vdfarm.service.audit import DEFAULT_AUDIT_DAYS, MAX_AUDIT_DAYS, AuditWriter
from vdfarm.service.deps import SessionFactory
from vdfarm.service.errors import Invalid, NotFound, Unavailable
from vdfarm.service.validation import check_name

CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Settings:
    """The farm's settings (defaults: PVS-like, heartbeat timeout shorter)."""

    heartbeat_timeout_s: float = DEFAULT_TIMEOUT.total_seconds()
    boot_phase_s: float = 60.0
    rebalance_trigger_pct: float = DEFAULT_TRIGGER_PCT
    audit_days: int = DEFAULT_AUDIT_DAYS
    auto_add_vdisk: str | None = None  # None: unknown MACs are not added
    auto_add_limit: int = DEFAULT_AUTO_ADD_LIMIT


MAX_AUTO_ADD_LIMIT = 100_000
LIMITS = {  # name: (lowest, highest, what it is)
    "heartbeat_timeout_s": (1.0, 600.0, "heartbeat timeout (seconds)"),
    "boot_phase_s": (0.0, 3600.0, "boot phase (seconds)"),
    "rebalance_trigger_pct": (0.0, MAX_TRIGGER_PCT, "rebalance trigger (percent)"),
    "audit_days": (0, MAX_AUDIT_DAYS, "audit retention (days, 0: forever)"),
    "auto_add_limit": (0, MAX_AUTO_ADD_LIMIT, "auto-add limit (devices)"),
}
INTEGERS = frozenset({"audit_days", "auto_add_limit"})  # settings that take whole numbers only


def checked(name: str, value: object) -> float | int:
    """VALUE as the setting NAME takes it (a whole number for INTEGERS).

    Raises Invalid.
    """
    low, high, what = LIMITS[name]
    allowed = int if name in INTEGERS else int | float
    if (
        isinstance(value, bool)
        or not isinstance(value, allowed)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        whole = " (a whole number)" if name in INTEGERS else ""
        raise Invalid(f"invalid {what} {value!r}: give {low:g}-{high:g}{whole}")
    return int(value) if name in INTEGERS else float(value)


def _from_row(row: FarmSettings | None, auto_add_vdisk: str | None = None) -> Settings:
    if row is None:
        return Settings()
    return Settings(
        row.heartbeat_timeout_s,
        row.boot_phase_s,
        row.rebalance_trigger_pct,
        row.audit_days,
        auto_add_vdisk,
        row.auto_add_limit,
    )


def _vdisk_name(session: Any, vdisk_id: int | None) -> str | None:
    vdisk = session.get(Vdisk, vdisk_id) if vdisk_id is not None else None
    return vdisk.name if vdisk is not None else None


class SettingsService:
    """Read (cached) and change the farm's settings."""

    def __init__(self, session: SessionFactory, audit: AuditWriter) -> None:
        self._session = session
        self._audit = audit
        self._cached: Settings | None = None
        self._read_at = -math.inf

    def current(self) -> Settings:
        """The settings as of at most CACHE_SECONDS ago (never raises)."""
        if self._cached is not None and time.monotonic() - self._read_at < CACHE_SECONDS:
            return self._cached
        try:
            return self.show()
        except Unavailable:
            return self._cached or Settings()

    def heartbeat_timeout(self) -> timedelta:
        """How old a heartbeat may be for its server to count as up (never raises)."""
        return timedelta(seconds=self.current().heartbeat_timeout_s)

    def boot_cutoff(self, now: datetime) -> datetime:
        """Sessions connected after this moment are booting: the farm's boot
        phase before NOW (never raises)."""
        return now - timedelta(seconds=self.current().boot_phase_s)

    def show(self) -> Settings:
        """The settings, read now. Raises Unavailable."""
        with self._session() as session:
            row = session.get(FarmSettings, 1)
            settings = _from_row(row, _vdisk_name(session, row.auto_add_vdisk_id if row else None))
        self._cached, self._read_at = settings, time.monotonic()
        return settings

    def change(
        self,
        *,
        heartbeat_timeout_s: float | None = None,
        boot_phase_s: float | None = None,
        rebalance_trigger_pct: float | None = None,
        audit_days: int | None = None,
        auto_add_vdisk: str | None = None,
        auto_add_limit: int | None = None,
        actor: str | None = None,
    ) -> Settings:
        """Change the given settings; return them all. AUTO_ADD_VDISK: the
        vDisk unknown MACs are added with ("" turns auto-add off). Audited
        as `farm.set`.

        Raises Invalid (a bad value, or nothing to change), NotFound (no
        such vDisk), Unavailable.
        """
        given = {
            "heartbeat_timeout_s": heartbeat_timeout_s,
            "boot_phase_s": boot_phase_s,
            "rebalance_trigger_pct": rebalance_trigger_pct,
            "audit_days": audit_days,
            "auto_add_limit": auto_add_limit,
        }
        changes: dict[str, Any] = {
            name: checked(name, value) for name, value in given.items() if value is not None
        }
        if auto_add_vdisk:
            check_name("vDisk", auto_add_vdisk)
        if not changes and auto_add_vdisk is None:
            raise Invalid(
                "nothing to change: give a heartbeat timeout, boot phase, rebalance "
                "trigger, audit retention, auto-add vDisk or auto-add limit"
            )
        with self._session() as session:
            row = session.get(FarmSettings, 1)
            if row is None:  # a database whose row was deleted by hand
                defaults = asdict(Settings())
                del defaults["auto_add_vdisk"]
                row = FarmSettings(id=1, **defaults)
                session.add(row)
                session.flush()
            before = _from_row(row, _vdisk_name(session, row.auto_add_vdisk_id))
            if auto_add_vdisk is not None:
                vdisk_id = None
                if auto_add_vdisk:
                    vdisk_id = session.scalar(select(Vdisk.id).where(Vdisk.name == auto_add_vdisk))
                    if vdisk_id is None:
                        raise NotFound(f"no vDisk named {auto_add_vdisk}")
                row.auto_add_vdisk_id = vdisk_id
                changes["auto_add_vdisk"] = auto_add_vdisk or None
            after = replace(before, **changes)
            for name, value in changes.items():
                if name != "auto_add_vdisk":
                    setattr(row, name, value)
            self._audit.record(
                session,
                actor=actor,
                action="farm.set",
                target_type="farm",
                target_name="settings",
                before=asdict(before),
                after=asdict(after),
            )
        self._cached, self._read_at = after, time.monotonic()
        return after
