"""Failover reports: a device's agent says it left one server for another.

Rules:
- A report names the device (name or MAC), the server it left (`from`) and
  the one it now streams from (`to`), the pause the device saw (`pause_ms`),
  the requests sent again (`retried`) and why (`reason`, one line of at
  most `MAX_REASON` characters). Every field is checked before anything is
  written (Invalid); an unknown device is NotFound.
- A report is one audit row, `device.failover` on the device, its fields in
  `after`: the audit is where an admin sees which devices moved and why, and
  `summary` reads the count and the last report back from it (`device
  show`). Audit retention prunes old reports with the rest of the audit.
- Server names are checked as names, not looked up: the server left may
  already be gone from the farm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import AuditEvent
from vdfarm.service.audit import AuditWriter
from vdfarm.service.deps import SessionFactory
from vdfarm.service.errors import Invalid, NotFound
from vdfarm.service.exports import find_device
from vdfarm.service.validation import check_name

ACTION = "device.failover"
MAX_REASON = 200
MAX_COUNT = 2**31 - 1  # pause_ms and retried: a plain int, bounded


@dataclass(frozen=True)
class FailoverReport:
    """One failover of a device, as its agent reported it."""

    device: str
    from_server: str
    to_server: str
    pause_ms: int
    retried: int
    reason: str
    at: datetime | None = None


def _check_count(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise Invalid(f"invalid {what} {value!r}: give a whole number 0-{MAX_COUNT}")
    return value


def check_report(
    from_server: object, to_server: object, pause_ms: object, retried: object, reason: object
) -> tuple[str, str, int, int, str]:
    """The report's fields, checked. Raises Invalid (one line)."""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise Invalid(f"invalid reason: give at most {MAX_REASON} characters of text")
    if any(not ch.isprintable() for ch in reason):
        raise Invalid("invalid reason: give one line of printable text")
    return (
        check_name("server", from_server),
        check_name("server", to_server),
        _check_count("pause_ms", pause_ms),
        _check_count("retried", retried),
        reason,
    )


def summary(session: Session, device_name: str) -> dict[str, Any] | None:
    """{count, last: {at, from, to, pause_ms, retried, reason}} of DEVICE_NAME's
    reported failovers (None: none)."""
    match = (AuditEvent.action == ACTION) & (AuditEvent.target_name == device_name)
    count = session.scalar(select(func.count()).select_from(AuditEvent).where(match)) or 0
    if not count:
        return None
    last = session.execute(
        select(AuditEvent.at, AuditEvent.after)
        .where(match)
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(1)
    ).one()
    fields = json.loads(last.after) if last.after else {}
    return {"count": int(count), "last": {"at": last.at, **fields}}


class FailoverService:
    """Failover reports of devices' agents."""

    def __init__(self, session: SessionFactory, audit: AuditWriter) -> None:
        self._session = session
        self._audit = audit

    def report(
        self,
        name_or_mac: str,
        *,
        from_server: object,
        to_server: object,
        pause_ms: object,
        retried: object,
        reason: object = "",
        actor: str | None = None,
    ) -> FailoverReport:
        """Record that device NAME_OR_MAC failed over FROM_SERVER → TO_SERVER
        (audited as `device.failover`); answer the report as recorded.

        Raises Invalid (a bad field), NotFound (no such device), Unavailable.
        """
        left, now_on, pause, again, why = check_report(
            from_server, to_server, pause_ms, retried, reason
        )
        with self._session() as session:
            device = find_device(session, name_or_mac)
            if device is None:
                raise NotFound(f"no device named {name_or_mac}")
            fields = {"from": left, "to": now_on, "pause_ms": pause, "retried": again}
            self._audit.record(
                session,
                actor=actor,
                action=ACTION,
                target_type="device",
                target_name=device.name,
                before=None,
                after={**fields, "reason": why},
            )
            return FailoverReport(device.name, left, now_on, pause, again, why, self._audit.clock())
