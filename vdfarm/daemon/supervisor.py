"""The supervisor: runs a server process's named tasks, and stops them.

Rules:
- A task (`Task`) has a name, a stop phase, and three steps: `start`
  (returns once the task is ready; raising aborts the start), `run` (its
  life: a loop until cancelled; by default it just waits), `stop` (frees
  what it holds). Tasks start in list order; one log line says when each
  has started and one when it has stopped.
- One place handles SIGTERM and SIGINT: either one starts the shutdown.
- Shutdown stops every started task in phase order — STOP_ACCEPTING
  (listeners), API, PERIODIC (loops that talk to the farm), SESSIONS
  (device connections and sessions), EXECUTORS (worker threads) — and,
  within a phase, the later-started first. A task's `run` is cancelled
  before its `stop` is called. A stop that raises is logged, and the
  others still stop.
- A task whose `run` raises (or returns: a task's life ends only when it is
  stopped) has died: it is logged with its name, every task is stopped, and
  the process exits with status 1 — never a half-alive server. The last
  log line names the task.
- Generic: it knows nothing of NBD, the API or the farm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence

log = logging.getLogger("vdfarm.daemon")

# Stop phases, in the order shutdown goes through them.
STOP_ACCEPTING = 0
API = 1
PERIODIC = 2
SESSIONS = 3
EXECUTORS = 4

EXIT_OK = 0
EXIT_TASK_DIED = 1


class Task:
    """A named part of the server process (subclass and override)."""

    name = "task"
    stop_phase = PERIODIC

    async def start(self) -> None:
        """Get ready (bind, open, register). Raises what stops the start."""

    async def run(self) -> None:
        """The task's life until cancelled; raising or returning means it
        died. By default, nothing to do but wait."""
        await asyncio.Event().wait()

    async def stop(self) -> None:
        """Free what the task holds (its `run` is already cancelled)."""


class TaskDied(Exception):
    """A task's `run` returned although nobody stopped it."""


def stop_order(started: Sequence[Task]) -> list[Task]:
    """STARTED in the order shutdown stops them: by phase, then the
    later-started first."""
    ranked = sorted(enumerate(started), key=lambda pair: (pair[1].stop_phase, -pair[0]))
    return [task for _, task in ranked]


class Supervisor:
    """Starts TASKS, waits for a signal or a task's death, stops them all."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        self.tasks = list(tasks)
        self.started: list[Task] = []
        self._runs: dict[asyncio.Task[None], Task] = {}
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        """Begin the shutdown (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start every task, call ON_READY, serve until SIGTERM/SIGINT or a
        task dies, stop every task. Returns the exit status: 0 after a
        signal, 1 when a task died or a stop failed.

        Raises what a task's `start` raised (the tasks started before it
        are stopped first).
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._start_all()
            if on_ready is not None:
                on_ready()
            died = await self._wait()
            if died is None:
                log.info("stopping: signal received")
            stopped_cleanly = await self._stop_all()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if died is not None:
            log.error("server stopped because task %s died", died.name)
            return EXIT_TASK_DIED
        return EXIT_OK if stopped_cleanly else EXIT_TASK_DIED

    async def _start_all(self) -> None:
        loop = asyncio.get_running_loop()
        for task in self.tasks:
            try:
                await task.start()
            except BaseException as exc:
                log.error("task %s failed to start: %s", task.name, exc)
                await self._stop_all()
                raise
            self.started.append(task)
            self._runs[loop.create_task(task.run(), name=f"vdfarm-{task.name}")] = task
            log.info("task %s started", task.name)

    async def _wait(self) -> Task | None:
        """Until a stop is requested (None) or a task's run ends (that task)."""
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                [stopping, *self._runs], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        for run, task in self._runs.items():
            if run not in done:
                continue
            error = None if run.cancelled() else run.exception()
            if error is None:
                error = TaskDied(f"task {task.name} ended by itself")
            log.error("task %s died: %r", task.name, error, exc_info=error)
            return task
        return None

    async def _stop_all(self) -> bool:
        """Stop every started task in stop order; False if a stop raised."""
        clean = True
        runs = {task: run for run, task in self._runs.items()}
        for task in stop_order(self.started):
            run = runs.get(task)
            if run is not None and not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run
            try:
                await task.stop()
            except Exception as exc:
                clean = False
                log.error("task %s failed to stop: %r", task.name, exc, exc_info=exc)
            log.info("task %s stopped", task.name)
        self.started.clear()
        self._runs.clear()
        return clean
