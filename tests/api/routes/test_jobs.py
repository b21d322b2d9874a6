"""/api/v1/jobs: the jobs this server runs, who may read them, and what a
hostile caller can make the server hold (bounded running and kept jobs)."""

from __future__ import annotations

import threading

from tests.api.conftest import error_of, job_of, unchanged
from vdfarm.service.jobs import JobBoard

MERGE = "/api/v1/vdisks/w/versions/merge"


def test_jobs_are_read_with_a_token_or_from_loopback(admin, local, remote, farm, populated):
    failed = job_of(admin, admin.post(MERGE))  # nothing to merge: the job fails
    assert (failed["state"], failed["error_status"]) == ("failed", 400)
    assert "nothing to merge" in failed["error"] and failed["result"] is None
    assert [j["id"] for j in local.get("/api/v1/jobs").json()] == [failed["id"]]
    assert local.get(f"/api/v1/jobs/{failed['id']}").json() == failed
    error_of(remote.get("/api/v1/jobs"), 401)
    error_of(remote.get(f"/api/v1/jobs/{failed['id']}"), 401)


def test_a_read_token_may_not_start_a_merge(app, farm, populated):
    from fastapi.testclient import TestClient

    from tests.api.conftest import OTHER_HOST

    secret = farm.tokens.add("viewer", "read", actor="test").secret
    reader = TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {secret}"})
    before = farm.versions.list("w")
    assert "admin" in error_of(reader.post(MERGE), 403)
    assert reader.get("/api/v1/jobs").json() == []  # the token's use is noted, nothing more
    assert farm.versions.list("w") == before


def test_unknown_jobs_are_404(admin, populated):
    for job_id in ("nope", "0" * 32, "x" * 4000, "%00"):
        assert "no such job" in error_of(admin.get(f"/api/v1/jobs/{job_id}"), 404)
    assert admin.get("/api/v1/jobs/..%2F..%2Fetc").status_code == 404


def test_a_flood_of_merges_is_bounded(app, admin, farm, populated):
    board = JobBoard(farm.clock, max_running=1, max_kept=3)
    app.state.jobs = board
    go = threading.Event()
    held = board.start("merge", "other", "test", lambda _p: go.wait())
    with unchanged(farm):
        for _ in range(5):
            assert "runs 1 jobs already" in error_of(admin.post(MERGE), 503)
    assert len(admin.get("/api/v1/jobs").json()) == 1
    go.set()
    for thread in threading.enumerate():
        if thread.name.endswith(held.id[:8]):
            thread.join()
    for _ in range(5):
        job_of(admin, admin.post(MERGE))
    assert len(admin.get("/api/v1/jobs").json()) == 3
