"""Showing the progress of long work on stderr: a bar, plain lines, or nothing.

Rules: stdout stays the result; progress goes to stderr only. With --json
nothing is shown. Otherwise `VDFARM_PROGRESS` decides: `auto` (the
default: a rich bar with bytes, rate and ETA when stderr is a terminal,
plain lines otherwise), `bar`, `plain` or `none`. The callback handed to
the work (`vdfarm.store.progress.Progress`) never raises, whatever the
terminal does. Against a remote farm (--farm) the work is the server's:
the client never calls the callback, so nothing is shown.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vdfarm.cli.common import state
from vdfarm.cli.progress_text import LineSchedule, Meter, plain_line
from vdfarm.store.progress import Progress as ProgressFn
from vdfarm.store.progress import silent

ENV = "VDFARM_PROGRESS"
MODES = ("auto", "bar", "plain", "none")


def chosen_mode(is_terminal: bool) -> str:
    """`bar`, `plain` or `none` for this command (see the module rules)."""
    if state().json:
        return "none"
    wanted = os.environ.get(ENV, "auto").strip().lower()
    if wanted not in MODES:
        raise click.UsageError(f"{ENV} must be one of {', '.join(MODES)}, not {wanted!r}")
    if wanted == "auto":
        return "bar" if is_terminal else "plain"
    return wanted


class _Bar:
    """One rich bar per pass, on stderr."""

    def __init__(self, label: str, console: Console) -> None:
        self._label = label
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _Bar:
        self._bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._bar.stop()

    def report(self, step: str, done: int, total: int) -> None:
        task = self._tasks.get(step)
        if task is None:
            task = self._bar.add_task(f"{self._label} ({step})", total=total or None)
            self._tasks[step] = task
        self._bar.update(task, completed=done, total=total or None)


class _Lines:
    """Plain lines on stderr, as `LineSchedule` says."""

    def __init__(self, label: str, clock: Callable[[], float]) -> None:
        self._label = label
        self._clock = clock
        self._meter = Meter()
        self._schedule = LineSchedule()

    def report(self, step: str, done: int, total: int) -> None:
        now = self._clock()
        reading = self._meter.read(step, done, total, now)
        if self._schedule.due(reading, now):
            click.echo(plain_line(self._label, reading), err=True)


def _guarded(report: ProgressFn) -> ProgressFn:
    def call(step: str, done: int, total: int) -> None:
        try:
            report(step, done, total)
        except Exception:  # a broken terminal must not break the work
            pass

    return call


@contextmanager
def shown(
    label: str, *, local: bool = True, clock: Callable[[], float] = time.monotonic
) -> Iterator[ProgressFn]:
    """The progress callback for the work named LABEL (`import golden`),
    shown on stderr while the block runs; nothing if the work is not LOCAL
    (a remote farm's)."""
    console = Console(stderr=True)
    mode = chosen_mode(console.is_terminal) if local else "none"
    if mode == "none":
        yield silent
    elif mode == "plain":
        yield _guarded(_Lines(label, clock).report)
    else:
        with _Bar(label, console) as bar:
            yield _guarded(bar.report)
