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
@json_option
def set_cmd(
    heartbeat_timeout_s: float | None,
    boot_phase_s: float | None,
    rebalance_trigger_pct: float | None,
    audit_days: int | None,
) -> None:
    """Change the farm's settings (the others stay as they are)."""
    settings = open_farm().settings.change(
        heartbeat_timeout_s=heartbeat_timeout_s,
        boot_phase_s=boot_phase_s,
        rebalance_trigger_pct=rebalance_trigger_pct,
        audit_days=audit_days,
    )

    def human() -> None:
        click.echo("updated the farm's settings")
        _show(settings)

    emit(settings, human)
