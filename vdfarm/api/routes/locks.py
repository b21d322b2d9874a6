"""GET /locks, POST /locks/{vdisk}/release (like `vdfarm lock list|release`).

Rules: releasing by hand fences the old holder off and is audited by the
service (when the lock had a holder).
"""

from __future__ import annotations

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.service.locks import LockInfo

router = make_router("locks")


@router.get("/locks", response_model=list[LockInfo])
def list_locks(farm: FarmDep) -> list[LockInfo]:
    """Every vDisk's lock: holder, server, lease, fencing token, state."""
    return farm.locks.list()


@router.post("/locks/{vdisk}/release", response_model=LockInfo)
def release_lock(vdisk: str, farm: FarmDep, actor: ActorDep) -> LockInfo:
    """Free the lock of VDISK whoever holds it; answers the lock as it was."""
    return farm.locks.release_by_admin(vdisk, actor=actor)
