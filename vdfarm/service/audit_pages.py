"""The audit trail read a page at a time (the REST API's GET /audit).

Rules: a page is at most MAX_PAGE entries, the newest ones before a cursor
(`before_id`, an entry id; none: the newest of all), answered oldest first;
the next page back is `before_id=<the first entry's id>`. Reading never
changes the trail. Takes a session factory (like `Farm.session`), not the Farm.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.models import AuditEvent
from vdfarm.service.audit import AuditEntry
from vdfarm.service.errors import Invalid

DEFAULT_PAGE = 100
MAX_PAGE = 1000

SessionFactory = Callable[[], AbstractContextManager[Session]]


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


def audit_page(
    session: SessionFactory,
    *,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = DEFAULT_PAGE,
) -> list[AuditEntry]:
    """The newest LIMIT entries at or after SINCE (aware) with an id below
    BEFORE_ID, oldest first.

    Raises Invalid (naive SINCE, LIMIT not in 1..MAX_PAGE, BEFORE_ID < 1),
    Unavailable (database down).
    """
    if since is not None and since.tzinfo is None:
        raise Invalid("invalid since: give a time with a zone, e.g. 2024-01-01T00:00:00Z")
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"invalid limit {limit}: give 1 to {MAX_PAGE}")
    if before_id is not None and before_id < 1:
        raise Invalid(f"invalid before_id {before_id}: give an entry id (>= 1)")
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    with session() as opened:
        rows = opened.scalars(query).all()
        return [_entry(r) for r in reversed(rows)]
