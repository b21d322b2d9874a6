"""`vdfarm farm show|set`: the settings of the whole farm.

Rules: flags, help and output only; `vdfarm.service.settings` checks the
values and audits the change. Every server reads the new values within a
couple of seconds.
"""

from __future__ import annotations

import click

from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import print_fields
from vdfarm.service.settings import Settings


def _show(settings: Settings) -> None:
    print_fields(
        [
            ("heartbeat timeout", f"{settings.heartbeat_timeout_s:g} s"),
            ("boot phase", f"{settings.boot_phase_s:g} s"),
            ("rebalance trigger", f"{settings.rebalance_trigger_pct:g} %"),
            ("audit kept", f"{settings.audit_days} days" if settings.audit_days else "forever"),
            ("auto-add vDisk", settings.auto_add_vdisk or "off"),
            ("auto-add limit", f"{settings.auto_add_limit} devices"),
        ]
    )


@click.group()
def farm() -> None:
    """Show and change the settings of the whole farm."""


@farm.command("show")
@json_option
def show_cmd() -> None:
    """Show the farm's settings."""
    settings = open_farm().settings.show()
    emit(settings, lambda: _show(settings))


@farm.command("set")
@click.option(
    "--heartbeat-timeout",
    "heartbeat_timeout_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="A server is down when its heartbeat is older (1-600; PVS uses 8).",
)
@click.option(
    "--boot-phase",
    "boot_phase_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="A device counts as booting this long after it connected (0-3600).",
)
@click.option(
    "--rebalance-trigger",
    "rebalance_trigger_pct",
    type=float,
    default=None,
    metavar="PERCENT",
    help="Rebalance until every up server is within this percentage of the "
    "weighted average (0-1000).",
)
@click.option(
    "--audit-days",
    "audit_days",
    type=int,
    default=None,
    metavar="DAYS",
    help="Keep audit entries this many days; older ones are pruned by the "
    "servers (0 keeps them forever; default 365).",
)
@click.option(
    "--auto-add-vdisk",
    "auto_add_vdisk",
    default=None,
    metavar="NAME",
    help="Register an unknown MAC that asks for its iPXE script (GET /boot/ipxe) "
    "as a new device booting vDisk NAME (off by default).",
)
@click.option(
    "--no-auto-add",
    is_flag=True,
    default=False,
    help="Turn auto-add off: unknown MACs are told so and not registered.",
)
@click.option(
    "--auto-add-limit",
    "auto_add_limit",
    type=int,
    default=None,
    metavar="DEVICES",
    help="At most this many auto-added devices in the farm (0-100000; default 100).",
)
@json_option
def set_cmd(
    heartbeat_timeout_s: float | None,
    boot_phase_s: float | None,
    rebalance_trigger_pct: float | None,
    audit_days: int | None,
    auto_add_vdisk: str | None,
    no_auto_add: bool,
    auto_add_limit: int | None,
) -> None:
    """Change the farm's settings (the others stay as they are)."""
    if no_auto_add and auto_add_vdisk is not None:
        raise click.UsageError("give --auto-add-vdisk or --no-auto-add, not both")
    if auto_add_vdisk == "":
        raise click.UsageError("give --auto-add-vdisk a vDisk name (--no-auto-add turns it off)")
    settings = open_farm().settings.change(
        heartbeat_timeout_s=heartbeat_timeout_s,
        boot_phase_s=boot_phase_s,
        rebalance_trigger_pct=rebalance_trigger_pct,
        audit_days=audit_days,
        auto_add_vdisk="" if no_auto_add else auto_add_vdisk,
        auto_add_limit=auto_add_limit,
    )

    def human() -> None:
        click.echo("updated the farm's settings")
        _show(settings)

    emit(settings, human)
