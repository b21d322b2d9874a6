"""`vdfarm rebalance`: move devices so every up server carries its share.

Rules: flags, help and output only; the plan and the move orders are made by
`vdfarm.service.moves.rebalance`. `--dry-run` shows the plan and changes
nothing; otherwise each move is ordered (the serving server asks the device
to reconnect to its new server) and audited.
"""

from __future__ import annotations

import click

from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import print_table
from vdfarm.service.moves import MAX_TRIGGER_PCT, RebalanceResult


def _print_result(result: RebalanceResult) -> None:
    if result.skipped:
        click.echo(f"no rebalance: {result.skipped}")
        return
    verb = "ordered" if result.applied else "would order"
    click.echo(
        f"weighted average {result.average:.2f} devices per unit of power, "
        f"trigger {result.trigger_pct:g}%: {verb} {len(result.moves)} move(s)"
    )
    if result.moves:
        print_table(
            ["DEVICE", "FROM", "TO"],
            [(m.device_name, m.from_server, m.to_server) for m in result.moves],
            empty="",
        )


@click.command("rebalance")
@click.option("--dry-run", is_flag=True, help="Show the moves, order none.")
@click.option(
    "--trigger",
    "trigger_pct",
    type=click.FloatRange(0, MAX_TRIGGER_PCT),
    default=None,
    help="Move devices until every up server is within this percentage of "
    "the weighted average [default: the farm's setting, 25 unless changed "
    "with `vdfarm farm set --rebalance-trigger`].",
)
@click.option(
    "--auto",
    is_flag=True,
    help="Apply the automatic mode's guards (nothing while more than 20% of a "
    "server's devices boot, nor below 5 devices per server).",
)
@json_option
def rebalance(dry_run: bool, trigger_pct: float | None, auto: bool) -> None:
    """Move connected devices between up servers to even out their load."""
    result = open_farm().rebalance(apply=not dry_run, trigger_pct=trigger_pct, auto=auto)
    emit(result, lambda: _print_result(result))
