"""Following a job (vdfarm.client.jobs): its progress passed on, its result
once done, its error raised as the call would raise it, nonsense refused."""

from __future__ import annotations

import pytest

from vdfarm.client.http import RemoteError
from vdfarm.client.jobs import MAX_POLL_S, follow
from vdfarm.service.errors import Conflict, Invalid


class Answers:
    """A FarmHttp stand-in answering each GET with the next of ANSWERS."""

    url = "http://farm.example"
    token_given = True

    def __init__(self, answers):
        self.answers = list(answers)
        self.asked = []

    def request(self, method, path, **_kw):
        self.asked.append((method, path))
        return self.answers.pop(0)


def job(state, **fields):
    return {"id": "abc", "state": state, "step": None, "done": 0, "total": 0} | fields


def test_progress_then_the_result():
    http = Answers(
        [
            job("running", step="merge", done=50, total=100),
            job("done", step="hash", done=100, total=100, result={"kept": 2}),
        ]
    )
    seen, slept = [], []
    result = follow(http, job("running"), lambda *a: seen.append(a), slept.append)
    assert result == {"kept": 2}
    assert seen == [("merge", 50, 100), ("hash", 100, 100)]
    assert http.asked == [("GET", "/jobs/abc")] * 2
    assert slept == [0.1, 0.2] and max(slept) <= MAX_POLL_S


@pytest.mark.parametrize(
    ("status", "kind"), [(400, Invalid), (409, Conflict), (500, RemoteError), (None, RemoteError)]
)
def test_a_failed_job_raises_what_the_call_would(status, kind):
    failed = job("failed", error="nothing to merge in vDisk w", error_status=status)
    with pytest.raises(kind) as raised:
        follow(Answers([]), failed, sleep=lambda _s: None)
    assert "nothing to merge in vDisk w" in str(raised.value)


@pytest.mark.parametrize(
    "answer", [None, [], {"state": "done"}, {"id": 7, "state": "done"}, job("sleeping")]
)
def test_an_answer_that_is_not_a_job_is_a_remote_error(answer):
    with pytest.raises(RemoteError):
        follow(Answers([]), answer, sleep=lambda _s: None)
