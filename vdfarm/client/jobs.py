"""Following a job the farm started for this client (`GET /jobs/{id}`)
until it ends: its result, or its error raised as the call would have.

Rules: one GET per look, every `poll` seconds growing to `MAX_POLL_S`; the
job's progress is passed to the caller's callback as it comes; a failed
job raises the ServiceError its status names (`http.error_for`), so a
remote merge fails exactly as a local one; an answer that is not a job is
a RemoteError. The clock and the sleep are passed in (tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from vdfarm.client.http import FarmHttp, RemoteError, error_for
from vdfarm.store.progress import Progress, silent

FIRST_POLL_S = 0.1
MAX_POLL_S = 1.0
INTERNAL_STATUS = 500


def _checked(job: Any) -> dict[str, Any]:
    if not isinstance(job, dict) or not isinstance(job.get("id"), str):
        raise RemoteError("the farm answered with something that is not a job")
    if job.get("state") not in ("running", "done", "failed"):
        raise RemoteError(f"the farm's job is in an unknown state {job.get('state')!r}")
    return job


def follow(
    http: FarmHttp,
    job: Any,
    progress: Progress = silent,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """The result (plain) of JOB (as the farm answered it) once it is done.

    Raises the job's error (Invalid, NotFound, Conflict, Unavailable,
    RemoteError), or what a GET of it raises.
    """
    poll = FIRST_POLL_S
    while True:
        job = _checked(job)
        step, done, total = job.get("step"), job.get("done"), job.get("total")
        if isinstance(step, str) and isinstance(done, int) and isinstance(total, int) and total:
            progress(step, done, total)
        if job["state"] == "done":
            return job.get("result")
        if job["state"] == "failed":
            status = job.get("error_status")
            status = status if isinstance(status, int) else INTERNAL_STATUS
            body = json.dumps({"detail": job.get("error") or "the job failed"})
            raise error_for(status, body, http.url, http.token_given)
        sleep(poll)
        poll = min(poll * 2, MAX_POLL_S)
        job = http.request("GET", f"/jobs/{quote(job['id'], safe='')}")
