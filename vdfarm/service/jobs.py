"""Jobs: long work a front end starts and answers at once, then watches.

Rules:
- A job runs one service call in a thread of its own and keeps what a
  caller may ask about it: its kind and target, the actor who started it,
  its state (`running`, then `done` or `failed`), its progress (the last
  `(step, done, total)` the work reported), and its result (made plain) or
  its error (the one line, and the HTTP status of its kind).
- Jobs live in memory, one board per server: a server that restarts
  forgets them (the work itself is safe: merges and seals record intents).
- Bounded, whatever callers do: at most `max_running` jobs run at once (one
  more is refused with Unavailable, nothing started), and at most
  `max_kept` are kept (the oldest finished ones are forgotten first).
- States and their transitions are data (`NEXT`); a job leaves `running`
  once, never comes back.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from vdfarm.service.deps import Clock
from vdfarm.service.errors import NotFound, ServiceError, Unavailable
from vdfarm.service.records import to_plain
from vdfarm.store.progress import Progress

log = logging.getLogger(__name__)

RUNNING, DONE, FAILED = "running", "done", "failed"
NEXT: dict[str, tuple[str, ...]] = {RUNNING: (DONE, FAILED), DONE: (), FAILED: ()}
MAX_RUNNING = 4
MAX_KEPT = 100
INTERNAL = "the job failed unexpectedly (see the server's log)"


@dataclass(frozen=True)
class JobInfo:
    """One job as callers see it. `step`, `done` and `total` are its last
    progress (bytes; total 0: not known yet); `result` is the work's answer
    made plain (done); `error` its one line and `error_status` the HTTP
    status of its kind (failed)."""

    id: str
    kind: str
    target: str
    actor: str
    state: str
    created_at: datetime
    finished_at: datetime | None = None
    step: str | None = None
    done: int = 0
    total: int = 0
    result: Any = None
    error: str | None = None
    error_status: int | None = None


class JobBoard:
    """The jobs of one server (thread-safe)."""

    def __init__(self, clock: Clock, max_running: int = MAX_RUNNING, max_kept: int = MAX_KEPT):
        if not 0 < max_running <= max_kept:
            raise ValueError("need 0 < max_running <= max_kept")
        self._clock = clock
        self._max_running = max_running
        self._max_kept = max_kept
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, JobInfo] = OrderedDict()

    def start(self, kind: str, target: str, actor: str, work: Callable[[Progress], Any]) -> JobInfo:
        """Start WORK (called with a progress callback) as a job of KIND on
        TARGET for ACTOR; answer the job as it starts.

        Raises Unavailable (this server runs `max_running` jobs already).
        """
        with self._lock:
            running = sum(1 for j in self._jobs.values() if j.state == RUNNING)
            if running >= self._max_running:
                raise Unavailable(
                    f"this server runs {running} jobs already; start another when one has ended"
                )
            self._forget_oldest()
            job = JobInfo(
                id=uuid.uuid4().hex,
                kind=kind,
                target=target,
                actor=actor,
                state=RUNNING,
                created_at=self._clock(),
            )
            self._jobs[job.id] = job
        thread = threading.Thread(
            target=self._run, args=(job.id, work), name=f"job-{kind}-{job.id[:8]}", daemon=True
        )
        thread.start()
        return job

    def _forget_oldest(self) -> None:
        """Make room for one more (the lock held)."""
        while len(self._jobs) >= self._max_kept:
            oldest = next((k for k, j in self._jobs.items() if j.state != RUNNING), None)
            if oldest is None:  # pragma: no cover - max_running <= max_kept
                return
            del self._jobs[oldest]

    def _run(self, job_id: str, work: Callable[[Progress], Any]) -> None:
        def progress(step: str, done: int, total: int) -> None:
            self._change(job_id, RUNNING, step=step, done=done, total=total)

        try:
            result = work(progress)
        except ServiceError as exc:
            self._finish(job_id, FAILED, error=exc.message, error_status=exc.http_status)
        except Exception:
            log.exception("job %s failed", job_id)
            self._finish(job_id, FAILED, error=INTERNAL, error_status=500)
        else:
            self._finish(job_id, DONE, result=to_plain(result))

    def _change(self, job_id: str, state: str, **fields: Any) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != RUNNING:
                return
            if state != RUNNING and state not in NEXT[job.state]:  # pragma: no cover
                raise ValueError(f"a job cannot go from {job.state} to {state}")
            self._jobs[job_id] = replace(job, state=state, **fields)

    def _finish(self, job_id: str, state: str, **fields: Any) -> None:
        self._change(job_id, state, finished_at=self._clock(), **fields)

    def get(self, job_id: str) -> JobInfo:
        """The job JOB_ID. Raises NotFound (unknown, or forgotten)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound("no such job on this server (unknown, or forgotten)")
        return job

    def list(self) -> list[JobInfo]:
        """Every job kept, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))
