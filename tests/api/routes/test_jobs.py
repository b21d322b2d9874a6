"""/api/v1/jobs: the jobs this server runs, who may read them, and what a
hostile caller can make the server hold (bounded running and kept jobs)."""

from __future__ import annotations

import threading

from tests.api.conftest import error_of, job_of, unchanged
from vdfarm.service.jobs import JobBoard

MERGE = "/api/v1/vdisks/w/versions/merge"


def two_updates(farm):
    """Versions 1 and 2 of w, sealed and in production: something to merge."""
    for _ in range(2):
        farm.versions.new("w")
        farm.versions.promote("w", "production")


def test_jobs_are_read_with_a_token_or_from_loopback(admin, local, remote, farm, populated):
    two_updates(farm)
    job = job_of(admin, admin.post(MERGE))
    assert (job["state"], job["result"]["removed"], job["error"]) == ("done", [1], None)
    assert [j["id"] for j in local.get("/api/v1/jobs").json()] == [job["id"]]
    assert local.get(f"/api/v1/jobs/{job['id']}").json() == job
    error_of(remote.get("/api/v1/jobs"), 401)
    error_of(remote.get(f"/api/v1/jobs/{job['id']}"), 401)


def test_what_a_merge_refuses_is_refused_at_once_without_a_job(admin, farm, populated):
    with unchanged(farm):
        assert "nothing to merge" in error_of(admin.post(MERGE), 400)
        assert "no vDisk named nope" in error_of(
            admin.post("/api/v1/vdisks/nope/versions/merge"), 404
        )
    assert admin.get("/api/v1/jobs").json() == []


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
    two_updates(farm)
    app.state.jobs = board = JobBoard(farm.clock, max_running=1, max_kept=3)
    go = threading.Event()
    held = board.start("merge", "other", "test", lambda _p: go.wait())
    with unchanged(farm):
        for _ in range(5):
            assert "runs 1 jobs already" in error_of(admin.post(MERGE), 503)
    assert [j["id"] for j in admin.get("/api/v1/jobs").json()] == [held.id]
    go.set()
    for thread in threading.enumerate():
        if thread.name.endswith(held.id[:8]):
            thread.join()
    assert job_of(admin, admin.post(MERGE))["state"] == "done"
    for i in range(5):
        board.start("merge", f"x{i}", "test", lambda _p: None)
        for thread in threading.enumerate():
            if thread.name.startswith("job-"):
                thread.join()
    assert len(admin.get("/api/v1/jobs").json()) == 3
