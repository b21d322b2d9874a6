"""`vdfarm lock …`: list vDisk locks, release one by hand, move a vDisk's
home (both audited).

Rules: flags, help and output only; every decision is the service's.
"""

from __future__ import annotations

import click

from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import print_table


@click.group()
def lock() -> None:
    """Inspect and release vDisk locks; move the home of a vDisk's writes."""


@lock.command("list")
@json_option
def list_cmd() -> None:
    """List every vDisk's lock: holder, server, home, lease, token, state."""
    infos = open_farm().locks.list()
    emit(
        infos,
        lambda: print_table(
            ["VDISK", "HOLDER", "SERVER", "HOME", "LEASE EXPIRES", "TOKEN", "STATE"],
            [
                (i.vdisk, i.holder, i.server, i.home, i.lease_expires_at, i.fencing_token, i.state)
                for i in infos
            ],
            empty="no vDisks, so no locks",
        ),
    )


@lock.command("release")
@click.argument("vdisk")
@json_option
def release_cmd(vdisk: str) -> None:
    """Free the lock of VDISK whoever holds it (its holder is fenced off)."""
    before = open_farm().locks.release_by_admin(vdisk)
    emit(
        before,
        lambda: click.echo(
            f"vDisk {vdisk} was not locked"
            if before.state == "free"
            else f"released the lock of vDisk {vdisk} (was held by device {before.holder})"
        ),
    )


@lock.command("home")
@click.argument("vdisk")
@click.argument("server")
@json_option
def home_cmd(vdisk: str, server: str) -> None:
    """Make SERVER the home of VDISK's writes: its copy becomes the current one
    (writes made on the old home are not in it). For a private vDisk whose
    server is gone for good."""
    after = open_farm().locks.move_home(vdisk, server)
    emit(after, lambda: click.echo(f"vDisk {vdisk} now lives on server {after.home}"))
