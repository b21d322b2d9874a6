"""GET /audit?since=&before_id=&limit= : the trail of changes, a page at a
time (like `vdfarm audit list`).

Rules: read only; `since` must carry a time zone (422 otherwise); a page
is at most 1000 entries (default 100), the newest before `before_id`,
oldest first; the answer's `X-Next-Before-Id` header is the cursor of the
page before it (absent on the last page). No route adds audit rows but the
changes themselves, each behind a token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Response
from pydantic import AwareDatetime

from vdfarm.api.deps import FarmDep, make_router
from vdfarm.service.audit import AuditEntry
from vdfarm.service.audit_pages import DEFAULT_PAGE, MAX_PAGE, audit_page

router = make_router("audit")
NEXT_HEADER = "X-Next-Before-Id"


@router.get("/audit", response_model=list[AuditEntry])
def list_audit(
    farm: FarmDep,
    response: Response,
    since: Annotated[
        AwareDatetime | None,
        Query(description="Only changes at or after this time (ISO 8601 with a zone)."),
    ] = None,
    before_id: Annotated[
        int | None,
        Query(ge=1, description="Only entries with a smaller id (the next page back)."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE, description="The newest N of them (at most 1000).")
    ] = DEFAULT_PAGE,
) -> list[AuditEntry]:
    """Recorded changes, oldest first: the newest LIMIT before BEFORE_ID."""
    entries = audit_page(farm.session, since=since, before_id=before_id, limit=limit)
    if len(entries) == limit and entries[0].id > 1:
        response.headers[NEXT_HEADER] = str(entries[0].id)
    return entries
