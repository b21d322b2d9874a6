"""GET /locks, POST /locks/{vdisk}/release, POST /locks/{vdisk}/home (like
`vdfarm lock list|release|home`).

Rules: releasing by hand fences the old holder off and is audited by the
service (when the lock had a holder).
"""

from __future__ import annotations

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.api.schemas import HomeBody
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


@router.post("/locks/{vdisk}/home", response_model=LockInfo)
def move_home(vdisk: str, body: HomeBody, farm: FarmDep, actor: ActorDep) -> LockInfo:
    """Make `server` the home of VDISK's writes (its copy becomes the current
    one); answers the lock after."""
    return farm.locks.move_home(vdisk, body.server, actor=actor)
