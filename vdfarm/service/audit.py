"""The audit trail: one row per change, from any front end.

Rules: `record` (or an `AuditWriter`, which fills in the time and the
default actor) is called inside the same session (transaction) as the
change it describes, so a change and its audit row commit or vanish together.
It also signals the change to the farm's servers (`farm.changes`: a
PostgreSQL NOTIFY at commit), so their replication starts at once.
before/after are JSON text of the records' plain views (None for create /
delete). Reading the trail never changes it.

Retention: `AuditService.prune(now)` deletes the rows older than the farm's
`audit_days` setting (0: keep forever), oldest first, PRUNE_BATCH rows per
transaction and at most PRUNE_MAX_BATCHES transactions per call, so a long
backlog never holds a write transaction (SQLite: every writer) for long; the
server calls it periodically. Nothing but `prune` ever deletes audit rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vdfarm.farm.changes import signal_change
from vdfarm.farm.models import AuditEvent, FarmSettings
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import Invalid
from vdfarm.service.records import to_json

DEFAULT_AUDIT_DAYS = 365
MAX_AUDIT_DAYS = 36500
PRUNE_BATCH = 1000
PRUNE_MAX_BATCHES = 100


@dataclass(frozen=True)
class AuditEntry:
    """One recorded change."""

    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_name: str
    before: Any
    after: Any


def record(
    session: Session,
    *,
    actor: str,
    at: datetime,
    action: str,
    target_type: str,
    target_name: str,
    before: Any,
    after: Any,
) -> None:
    """Add an audit row for a change to the session's transaction."""
    session.add(
        AuditEvent(
            at=at,
            actor=actor,
            action=action,
            target_type=target_type,
            target_name=target_name,
            before=None if before is None else to_json(before),
            after=None if after is None else to_json(after),
        )
    )
    signal_change(session)


class AuditWriter:
    """Writes audit rows stamped with CLOCK's time, by ACTOR unless a call
    names another actor."""

    def __init__(self, clock: Clock, actor: str) -> None:
        self.clock = clock
        self.actor = actor

    def record(
        self,
        session: Session,
        *,
        action: str,
        target_type: str,
        target_name: str,
        before: Any,
        after: Any,
        actor: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Add an audit row to the session's transaction (at AT, default now)."""
        record(
            session,
            actor=actor or self.actor,
            at=at or self.clock(),
            action=action,
            target_type=target_type,
            target_name=target_name,
            before=before,
            after=after,
        )


def _entry(row: AuditEvent) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target_type=row.target_type,
        target_name=row.target_name,
        before=None if row.before is None else json.loads(row.before),
        after=None if row.after is None else json.loads(row.after),
    )


class AuditService:
    """Read the audit trail; prune it to the farm's retention."""

    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    def list(self, since: datetime | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries at or after SINCE (aware datetime), oldest first; the
        newest LIMIT of them if LIMIT is given.

        Raises Invalid (naive SINCE, bad LIMIT), Unavailable (DB down).
        """
        if since is not None and since.tzinfo is None:
            raise Invalid("invalid --since: give a time with a zone, e.g. 2024-01-01T00:00:00Z")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise Invalid(f"invalid limit {limit!r}: give a number >= 1")
        query = select(AuditEvent).order_by(AuditEvent.id.desc())
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            rows = session.scalars(query).all()
            return [_entry(r) for r in reversed(rows)]

    def retention_days(self) -> int:
        """The farm's audit retention in days (0: forever).

        Raises Unavailable (DB down).
        """
        with self._session() as session:
            row = session.get(FarmSettings, 1)
            return DEFAULT_AUDIT_DAYS if row is None else row.audit_days

    def prune(
        self,
        now: datetime,
        *,
        batch: int = PRUNE_BATCH,
        max_batches: int = PRUNE_MAX_BATCHES,
    ) -> int:
        """Delete the audit rows older than the farm's retention before NOW
        (aware), oldest first, BATCH rows per transaction, at most MAX_BATCHES
        transactions; return how many were deleted. A retention of 0 deletes
        nothing. Call it again later if it returned BATCH * MAX_BATCHES.

        Raises Invalid (naive NOW, BATCH or MAX_BATCHES < 1), Unavailable (DB down).
        """
        if now.tzinfo is None:
            raise Invalid("prune needs an aware time (UTC)")
        if batch < 1 or max_batches < 1:
            raise Invalid(f"invalid prune batch {batch} x {max_batches}: give numbers >= 1")
        days = self.retention_days()
        if days == 0:
            return 0
        cutoff = now - timedelta(days=days)
        deleted = 0
        for _ in range(max_batches):
            with self._session() as session:
                ids = session.scalars(
                    select(AuditEvent.id)
                    .where(AuditEvent.at < cutoff)
                    .order_by(AuditEvent.id)
                    .limit(batch)
                ).all()
                if ids:
                    session.execute(delete(AuditEvent).where(AuditEvent.id.in_(ids)))
            deleted += len(ids)
            if len(ids) < batch:
                break
        return deleted
