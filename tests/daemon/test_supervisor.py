"""The supervisor alone, in one process: start and stop lines, the stated
shutdown order, a task that dies, a start or a stop that fails."""

from __future__ import annotations

import asyncio
import logging

import pytest

from vdfarm.daemon.supervisor import (
    API,
    EXECUTORS,
    PERIODIC,
    SESSIONS,
    STOP_ACCEPTING,
    Supervisor,
    Task,
    stop_order,
)


class Recorder(Task):
    """A task that writes down what happened to it in EVENTS."""

    def __init__(self, name: str, phase: int, events: list[str], *, fail: str = "") -> None:
        self.name = name
        self.stop_phase = phase
        self.events = events
        self.fail = fail  # "start", "run", "return", "stop" or ""

    async def start(self) -> None:
        if self.fail == "start":
            raise OSError(f"{self.name} cannot bind")
        self.events.append(f"start {self.name}")

    async def run(self) -> None:
        if self.fail == "run":
            await asyncio.sleep(0.05)
            raise RuntimeError(f"{self.name} broke")
        if self.fail == "return":
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events.append(f"cancel {self.name}")
            raise

    async def stop(self) -> None:
        self.events.append(f"stop {self.name}")
        if self.fail == "stop":
            raise RuntimeError(f"{self.name} would not stop")


def server_like(events: list[str], **fail: str) -> list[Task]:
    """A server's shape, in start order."""
    names = [
        ("executors", EXECUTORS),
        ("sessions", SESSIONS),
        ("listener", STOP_ACCEPTING),
        ("api", API),
        ("heartbeat", PERIODIC),
        ("moves", PERIODIC),
    ]
    return [Recorder(n, p, events, fail=fail.get(n, "")) for n, p in names]


def supervise(tasks: list[Task], stop_after: float | None = 0.05) -> int:
    async def main() -> int:
        supervisor = Supervisor(tasks)

        def ready() -> None:
            if stop_after is not None:
                asyncio.get_running_loop().call_later(stop_after, supervisor.request_stop)

        return await supervisor.run(on_ready=ready)

    return asyncio.run(asyncio.wait_for(main(), 10))


def test_the_shutdown_order_is_by_phase_then_latest_started_first():
    events: list[str] = []
    tasks = server_like(events)
    assert [t.name for t in stop_order(tasks)] == [
        "listener",
        "api",
        "moves",
        "heartbeat",
        "sessions",
        "executors",
    ]


def test_a_stop_request_stops_every_task_in_order_and_logs_each(caplog):
    caplog.set_level(logging.INFO, logger="vdfarm.daemon")
    events: list[str] = []
    assert supervise(server_like(events)) == 0
    starts = [e for e in events if e.startswith("start")]
    assert starts == [
        f"start {n}" for n in ("executors", "sessions", "listener", "api", "heartbeat", "moves")
    ]
    stops = [e for e in events if not e.startswith("start")]
    assert stops == [  # each task's life is cancelled before it is stopped
        "cancel listener",
        "stop listener",
        "cancel api",
        "stop api",
        "cancel moves",
        "stop moves",
        "cancel heartbeat",
        "stop heartbeat",
        "cancel sessions",
        "stop sessions",
        "cancel executors",
        "stop executors",
    ]
    lines = [r.getMessage() for r in caplog.records]
    for name in ("executors", "sessions", "listener", "api", "heartbeat", "moves"):
        assert f"task {name} started" in lines and f"task {name} stopped" in lines


@pytest.mark.parametrize("how", ["run", "return"])
def test_a_task_that_dies_stops_every_task_and_exits_1_naming_it(caplog, how):
    caplog.set_level(logging.INFO, logger="vdfarm.daemon")
    events: list[str] = []
    assert supervise(server_like(events, heartbeat=how), stop_after=None) == 1
    assert [e for e in events if e.startswith("stop")] == [
        f"stop {n}" for n in ("listener", "api", "moves", "heartbeat", "sessions", "executors")
    ]
    died = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert died[0].getMessage().startswith("task heartbeat died")
    assert caplog.records[-1].getMessage() == "server stopped because task heartbeat died"


def test_a_start_that_fails_stops_what_started_and_raises(caplog):
    events: list[str] = []
    with pytest.raises(OSError, match="api cannot bind"):
        supervise(server_like(events, api="start"))
    assert [e for e in events if not e.startswith("cancel")] == [
        "start executors",
        "start sessions",
        "start listener",
        "stop listener",
        "stop sessions",
        "stop executors",
    ]


def test_a_stop_that_fails_is_logged_the_others_still_stop_and_the_exit_is_1(caplog):
    events: list[str] = []
    assert supervise(server_like(events, api="stop")) == 1
    assert "stop executors" in events and "stop sessions" in events
    assert any("task api failed to stop" in r.getMessage() for r in caplog.records)


def test_task_names_are_unique():
    events: list[str] = []
    with pytest.raises(ValueError, match="unique"):
        Supervisor([Recorder("a", PERIODIC, events), Recorder("a", API, events)])
