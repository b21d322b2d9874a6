"""`vdfarm replication status|wait|start`: where each sealed version is, wait
for one to be everywhere, let one ignore the copy windows.

Rules: flags, help and output only; the facts are the service's
(`ReplicationService.status`). `wait` polls the status (one call each
`--interval`), shows the up servers' bytes as `vdfarm.cli.progress` does
(a bar on a terminal, plain lines otherwise, nothing with --json), and exits 0 once the version is on every up
server of its store, or 1 with one line saying who lacks it when
`--timeout` runs out. On a PostgreSQL farm opened here, a change of the
farm (a server's inventory) ends the wait between two polls early
(`farm.changes`). An unknown vDisk or version is a usage error (one line,
exit 2).
"""

from __future__ import annotations

import threading
import time

import click

from vdfarm.cli.common import emit, json_option, open_farm, typed_wrong
from vdfarm.cli.output import fmt_size, print_table
from vdfarm.cli.progress import shown
from vdfarm.cli.progress_text import fmt_eta
from vdfarm.client.local import LocalFarm
from vdfarm.farm.changes import listener_for
from vdfarm.farm.windows import rate_text
from vdfarm.service.replica_status import (
    COPYING,
    PRESENT,
    SERVER_DOWN,
    ReplicaStatus,
    ReplicationProgress,
)

POLL_SECONDS = 1.0


class WaitTimedOut(click.ClickException):
    """The version was not everywhere in time: one line, exit 1."""

    exit_code = 1


def _rows(statuses: list[ReplicaStatus]) -> list[tuple]:
    return [
        (
            s.vdisk,
            f"{s.version} (pending)" if s.pending else s.version,
            s.server,
            s.state,
            f"{fmt_size(s.bytes_done)} / {fmt_size(s.bytes_total)}",
            rate_text(round(s.rate_bps)) if s.state == COPYING and s.rate_bps else None,
            fmt_eta(s.eta_s),
            s.reason,
        )
        for s in statuses
    ]


@click.group()
def replication() -> None:
    """Replication of vDisk versions to every server of their store."""


@replication.command("status")
@click.argument("vdisk", required=False)
@json_option
def status_cmd(vdisk: str | None) -> None:
    """Show every sealed version of every vDisk (or of VDISK) on every
    server of its store: present, copying, queued, failed, mismatch,
    missing or server down, and which versions are still pending."""
    farm = open_farm()
    with typed_wrong():
        statuses = farm.replication.status(vdisk)
    emit(
        statuses,
        lambda: print_table(
            ["VDISK", "VERSION", "SERVER", "STATE", "DONE / TOTAL", "RATE", "ETA", "WHY"],
            _rows(statuses),
            empty="no vDisks" if vdisk is None else f"vDisk {vdisk} has no sealed version",
        ),
    )


def _lacking(progress: ReplicationProgress) -> str:
    parts = []
    for s in progress.servers:
        if s.state in (PRESENT, SERVER_DOWN):
            continue
        detail = f" ({s.reason})" if s.reason else ""
        if s.state == COPYING and s.bytes_total:
            detail = f" {100 * s.bytes_done // s.bytes_total}%"
        parts.append(f"{s.server} {s.state}{detail}")
    return ", ".join(parts) or "no server of its store is up"


@replication.command("wait")
@click.argument("vdisk")
@click.option(
    "--version",
    "number",
    type=click.IntRange(min=0),
    default=None,
    help="The version to wait for (default: the newest sealed one).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Give up after this many seconds (exit 1); default: wait as long as it takes.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=POLL_SECONDS,
    show_default=True,
    help="Seconds between two looks at the status.",
)
@json_option
def wait_cmd(vdisk: str, number: int | None, timeout: float | None, interval: float) -> None:
    """Wait until version NUMBER of VDISK is on every up server of its store
    (exit 0), showing the copies' progress."""
    farm = open_farm()
    with typed_wrong():
        if number is None:  # the newest sealed version
            number = max((s.version for s in farm.replication.status(vdisk)), default=0)
        version = number
        progress = farm.replication.progress(vdisk, version)
    deadline = None if timeout is None else time.monotonic() + timeout
    changed = threading.Event()
    listener = listener_for(farm.farm.db_url, changed.set) if isinstance(farm, LocalFarm) else None
    if listener is not None:
        listener.start()
        click.get_current_context().call_on_close(listener.stop)
    with shown(f"wait {vdisk} v{version}") as report:
        waited = False
        while not progress.replicated:
            waited = True
            report("copies", progress.bytes_done, progress.bytes_total)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(
                    f"version {version} of vDisk {vdisk} is not on every up server of its "
                    f"store after {timeout:g} s: {_lacking(progress)}"
                )
            left = interval if deadline is None else deadline - time.monotonic()
            changed.wait(max(0.0, min(interval, left)))
            changed.clear()
            progress = farm.replication.progress(vdisk, version)
        if waited and progress.bytes_total:  # the last reading: 100 %
            report("copies", progress.bytes_done, progress.bytes_total)
    servers = sum(1 for s in progress.servers if s.state == PRESENT)
    emit(
        progress,
        lambda: click.echo(
            f"version {version} of vDisk {vdisk} is on every up server of its store ({servers})"
        ),
    )


@replication.command("start")
@click.argument("vdisk")
@click.option(
    "--version",
    "number",
    type=click.IntRange(min=0),
    default=None,
    help="The version (default: the newest sealed one).",
)
@click.option("--now", is_flag=True, help="Copy it now, ignoring the store's copy windows.")
@json_option
def start_cmd(vdisk: str, number: int | None, now: bool) -> None:
    """Let the copies of a version of VDISK ignore its store's copy windows."""
    if not now:
        raise click.UsageError("give --now (copies otherwise start by themselves in a window)")
    farm = open_farm()
    with typed_wrong():
        started = farm.replication.start_now(vdisk, number)
    emit(
        started,
        lambda: click.echo(
            f"version {started.version} of vDisk {vdisk} is copied now, windows or not"
        ),
    )
