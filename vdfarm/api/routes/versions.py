"""/vdisks/{name}/versions: list, show one, open, promote, revert, override,
merge (a job: 202 at once, see /jobs), delete the newest (like `vdfarm version …`).

Rules: paths, bodies and status codes only; every decision (which step is
allowed, who is connected) is the service's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body as BodyParam
from fastapi import Response

from vdfarm.api.deps import API_PREFIX, ActorDep, FarmDep, JobsDep, make_router
from vdfarm.api.schemas import MergeBody, OverrideBody, PromoteBody
from vdfarm.service.jobs import JobInfo
from vdfarm.service.merges import MergeResult
from vdfarm.service.versions import OverrideInfo, PromoteResult, VersionInfo
from vdfarm.store.progress import Progress

router = make_router("versions")

PREFIX = "/vdisks/{name}/versions"


@router.get(PREFIX, response_model=list[VersionInfo])
def list_versions(name: str, farm: FarmDep) -> list[VersionInfo]:
    """Every version of vDisk NAME, oldest first."""
    return farm.versions.list(name)


@router.get(PREFIX + "/{number}", response_model=VersionInfo)
def show_version(name: str, number: int, farm: FarmDep) -> VersionInfo:
    """Version NUMBER of vDisk NAME (with its boot files, if any)."""
    return farm.versions.show(name, number)


@router.post(PREFIX, response_model=VersionInfo, status_code=201)
def open_version(name: str, farm: FarmDep, actor: ActorDep) -> VersionInfo:
    """Open a maintenance version of NAME on its newest version."""
    return farm.versions.new(name, actor=actor)


@router.post(f"{PREFIX}/promote", response_model=PromoteResult)
def promote_version(name: str, body: PromoteBody, farm: FarmDep, actor: ActorDep) -> PromoteResult:
    """Promote the newest version of NAME to test or production (from `at`,
    or once every up server of its store holds it: `when_replicated`)."""
    return farm.versions.promote(
        name, body.to, at=body.at, actor=actor, when_replicated=body.when_replicated
    )


@router.post(f"{PREFIX}/revert", response_model=VersionInfo)
def revert_version(name: str, farm: FarmDep, actor: ActorDep) -> VersionInfo:
    """Take the newest version of NAME back one step (production → test → maintenance)."""
    return farm.versions.revert(name, actor=actor)


@router.post(f"{PREFIX}/override", response_model=OverrideInfo)
def override_version(name: str, body: OverrideBody, farm: FarmDep, actor: ActorDep) -> OverrideInfo:
    """Pin the production devices of NAME to a version (`null`: remove the pin)."""
    return farm.versions.override(name, body.version, actor=actor)


@router.post(f"{PREFIX}/merge", response_model=JobInfo, status_code=202)
def merge_versions(
    name: str,
    farm: FarmDep,
    jobs: JobsDep,
    actor: ActorDep,
    response: Response,
    body: Annotated[MergeBody | None, BodyParam()] = None,
) -> JobInfo:
    """Fold the versions of NAME into one delta on its base (or a new base),
    as a job: answers 202 and the job at once (`Location`: GET it until its
    state is `done`, with the merge's result, or `failed`, with its error).
    What the merge would refuse before its fold (unknown vDisk, nothing to
    merge, a device on a version it would delete, another merge under way)
    is refused at once (404, 400, 409); 503 when this server runs too many
    jobs."""
    new_base = body.new_base if body is not None else False
    farm.versions.check_merge(name, new_base)

    def merge(progress: Progress) -> MergeResult:
        return farm.versions.merge(name, new_base=new_base, actor=actor, progress=progress)

    job = jobs.start("merge", name, actor, merge)
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    return job


@router.delete(f"{PREFIX}/newest", response_model=VersionInfo)
def delete_newest_version(name: str, farm: FarmDep, actor: ActorDep) -> VersionInfo:
    """Delete the newest version of NAME (never the base); answers it as it was."""
    return farm.versions.delete(name, actor=actor)
