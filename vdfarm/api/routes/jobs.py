"""/jobs: the long work this server runs for its callers (a merge started
through the API), with progress, actor, state and result or error.

Rules: paths and status codes only; the board (`vdfarm.service.jobs`,
`app.state.jobs`) keeps and bounds the jobs. Jobs are this server's: ask
the server that answered the request that started one.
"""

from __future__ import annotations

from vdfarm.api.deps import JobsDep, make_router
from vdfarm.service.jobs import JobInfo

router = make_router("jobs")


@router.get("/jobs", response_model=list[JobInfo])
def list_jobs(jobs: JobsDep) -> list[JobInfo]:
    """The jobs this server keeps (running, and the last ones ended), newest first."""
    return jobs.list()


@router.get("/jobs/{job_id}", response_model=JobInfo)
def show_job(job_id: str, jobs: JobsDep) -> JobInfo:
    """One job: its state, progress, and result or error once ended."""
    return jobs.get(job_id)
