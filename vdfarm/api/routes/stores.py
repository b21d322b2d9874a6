"""GET /stores: what each server's store holds complete and verified (like
`vdfarm store list`).

Rules: read only; every server of the farm is listed, one that holds
nothing with an empty list. The facts are the servers' own inventory rows
(refreshed with each heartbeat), not a scan from here.
"""

from __future__ import annotations

from vdfarm.api.deps import FarmDep, make_router
from vdfarm.api.schemas import StoreHoldings, store_holdings

router = make_router("stores")


@router.get("/stores", response_model=list[StoreHoldings])
def list_stores(farm: FarmDep) -> list[StoreHoldings]:
    """Every server, by name, with the vDisk versions its store holds verified."""
    return store_holdings(farm.servers.inventory())
