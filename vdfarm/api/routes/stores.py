"""/stores and /store-sets: what each server's store holds complete and
verified (GET /stores, like `vdfarm store list`), and the store sets —
which vDisks go to which servers, capped and in which windows (like
`vdfarm store sets|add|set`).

Rules: read only for the holdings; every server of the farm is listed, one
that holds nothing with an empty list. The facts are the servers' own
inventory rows (refreshed with each heartbeat), not a scan from here. Store
sets: paths, bodies and status codes only; the checks are the service's.
"""

from __future__ import annotations

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.api.schemas import StoreAdd, StoreHoldings, StorePatch, store_holdings
from vdfarm.service.store_sets import StoreSetInfo

router = make_router("stores")


@router.get("/stores", response_model=list[StoreHoldings])
def list_stores(farm: FarmDep) -> list[StoreHoldings]:
    """Every server, by name, with the vDisk versions its store holds verified."""
    return store_holdings(farm.servers.inventory())


@router.get("/store-sets", response_model=list[StoreSetInfo])
def list_store_sets(farm: FarmDep) -> list[StoreSetInfo]:
    """Every store set, by name: its servers (empty: all), cap, windows and vDisks."""
    return farm.replication.store_sets()


@router.post("/stores", response_model=StoreSetInfo, status_code=201)
def add_store(body: StoreAdd, farm: FarmDep, actor: ActorDep) -> StoreSetInfo:
    """Add a store set."""
    return farm.replication.add_store(
        body.name, body.servers, body.max_rate, body.windows, actor=actor
    )


@router.patch("/stores/{name}", response_model=StoreSetInfo)
def change_store(name: str, body: StorePatch, farm: FarmDep, actor: ActorDep) -> StoreSetInfo:
    """Change the servers, cap or windows of store set NAME."""
    return farm.replication.set_store(name, **body.changes(), actor=actor)
