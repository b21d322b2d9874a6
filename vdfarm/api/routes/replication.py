"""/replication: where each sealed version is (like `vdfarm replication
status`), and `replication start --now`.

Rules: paths, bodies and status codes only; every decision is the
service's. The copies themselves travel over the replication file routes
(another module), never these.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.api.schemas import ReplicationStartBody
from vdfarm.service.replica_status import ReplicaStatus
from vdfarm.service.replication import ReplicationStart

router = make_router("replication")


@router.get("/replication", response_model=list[ReplicaStatus])
def replication_status(
    farm: FarmDep,
    vdisk: str | None = None,
    version: Annotated[int | None, Query(ge=0, description="Needs `vdisk`.")] = None,
) -> list[ReplicaStatus]:
    """Every sealed version of every vDisk (or of `vdisk`, or only its
    `version`) on every server of its store: present, copying (bytes, rate,
    ETA), queued / failed / mismatch (why), missing or server down, and
    whether the version is still pending."""
    return farm.replication.status(vdisk, version)


@router.post("/replication/start", response_model=ReplicationStart)
def start_now(body: ReplicationStartBody, farm: FarmDep, actor: ActorDep) -> ReplicationStart:
    """Let the copies of a version (default: the vDisk's newest sealed one)
    ignore its store's copy windows."""
    return farm.replication.start_now(body.vdisk, body.version, actor=actor)
