"""GET /audit?since=&limit= : the trail of changes (like `vdfarm audit list`).

Rules: read only; `since` must carry a time zone (422 otherwise).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import AwareDatetime

from vdfarm.api.deps import FarmDep, make_router
from vdfarm.service.audit import AuditEntry

router = make_router("audit")


@router.get("/audit", response_model=list[AuditEntry])
def list_audit(
    farm: FarmDep,
    since: Annotated[
        AwareDatetime | None,
        Query(description="Only changes at or after this time (ISO 8601 with a zone)."),
    ] = None,
    limit: Annotated[int | None, Query(ge=1, description="Only the newest N.")] = None,
) -> list[AuditEntry]:
    """Recorded changes, oldest first."""
    return farm.audit.list(since=since, limit=limit)
