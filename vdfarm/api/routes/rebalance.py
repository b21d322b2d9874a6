"""POST /rebalance: move devices so every up server carries its share (like
`vdfarm rebalance`).

Rules: one call of `MoveService.rebalance` (`farm.moves`); `dry_run` plans and
orders nothing, but is still a POST that needs the token. The body may be
left out (defaults: apply, the farm's trigger setting, no auto guards).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body as BodyParam

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.api.schemas import RebalanceBody
from vdfarm.service.moves import RebalanceResult

router = make_router("rebalance")


@router.post("/rebalance", response_model=RebalanceResult)
def rebalance_farm(
    farm: FarmDep, actor: ActorDep, body: Annotated[RebalanceBody | None, BodyParam()] = None
) -> RebalanceResult:
    """Plan (and unless `dry_run`, order) the moves that bring every up server
    within `trigger_pct` % of the weighted average."""
    body = body if body is not None else RebalanceBody()
    return farm.moves.rebalance(
        apply=not body.dry_run, trigger_pct=body.trigger_pct, auto=body.auto, actor=actor
    )
