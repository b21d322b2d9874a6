"""The job board (vdfarm.service.jobs): a job's life (running, then done
with its result or failed with its error), its progress, and the bounds on
what callers can make a server hold."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from vdfarm.service.errors import Conflict, NotFound, Unavailable
from vdfarm.service.jobs import DONE, FAILED, INTERNAL, RUNNING, JobBoard


def now():
    return datetime.now(UTC)


def ended(board, job_id):
    """JOB_ID once it is no longer running (its thread joined)."""
    for thread in threading.enumerate():
        if thread.name.endswith(job_id[:8]):
            thread.join()
    job = board.get(job_id)
    assert job.state != RUNNING
    return job


@dataclass(frozen=True)
class Answer:
    vdisk: str
    removed: tuple[int, ...]


def test_a_job_runs_reports_and_ends_with_its_result_made_plain():
    board = JobBoard(now)
    go = threading.Event()

    def work(progress):
        progress("merge", 50, 100)
        go.wait()
        progress("hash", 100, 100)
        return Answer("w", (1, 2))

    job = board.start("merge", "w", "token:ops@10.0.0.1", work)
    assert (job.state, job.kind, job.target, job.actor) == (
        RUNNING,
        "merge",
        "w",
        "token:ops@10.0.0.1",
    )
    go.set()
    done = ended(board, job.id)
    assert (done.state, done.result, done.error) == (DONE, {"vdisk": "w", "removed": [1, 2]}, None)
    assert (done.step, done.done, done.total) == ("hash", 100, 100)
    assert done.finished_at >= done.created_at


def test_a_service_error_fails_the_job_with_its_line_and_status():
    board = JobBoard(now)

    def work(_progress):
        raise Conflict("version 1 is in use")

    job = ended(board, board.start("merge", "w", "a", work).id)
    assert (job.state, job.error, job.error_status, job.result) == (
        FAILED,
        "version 1 is in use",
        409,
        None,
    )


def test_an_unexpected_error_fails_the_job_without_its_insides(caplog):
    board = JobBoard(now)

    def work(_progress):
        raise RuntimeError("secret /srv/path detail")

    job = ended(board, board.start("merge", "w", "a", work).id)
    assert (job.state, job.error, job.error_status) == (FAILED, INTERNAL, 500)
    assert "secret" not in job.error


def test_at_most_max_running_run_at_once():
    board = JobBoard(now, max_running=2, max_kept=10)
    go = threading.Event()
    first = [board.start("merge", f"w{i}", "a", lambda _p: go.wait()) for i in range(2)]
    with pytest.raises(Unavailable, match="runs 2 jobs already"):
        board.start("merge", "w3", "a", lambda _p: None)
    assert len(board.list()) == 2  # the refused one was not kept
    go.set()
    for job in first:
        ended(board, job.id)
    ended(board, board.start("merge", "w3", "a", lambda _p: None).id)


def test_at_most_max_kept_are_kept_the_oldest_ended_forgotten_first():
    board = JobBoard(now, max_running=1, max_kept=3)
    ids = [
        ended(board, board.start("merge", f"w{i}", "a", lambda _p, i=i: i).id).id for i in range(5)
    ]
    assert [j.id for j in board.list()] == ids[:1:-1]  # newest first, the last 3
    with pytest.raises(NotFound, match="no such job"):
        board.get(ids[0])


def test_a_running_job_is_never_forgotten():
    board = JobBoard(now, max_running=1, max_kept=1)
    go = threading.Event()
    running = board.start("merge", "w", "a", lambda _p: go.wait())
    with pytest.raises(Unavailable):
        board.start("merge", "w2", "a", lambda _p: None)
    assert board.get(running.id).state == RUNNING
    go.set()
    ended(board, running.id)


def test_bounds_must_make_sense():
    for running, kept in ((0, 5), (3, 2)):
        with pytest.raises(ValueError):
            JobBoard(now, max_running=running, max_kept=kept)
