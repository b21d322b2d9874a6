"""What every CLI command shares: global options, opening the farm, output mode.

Rules: commands are thin — parse flags, call ONE service method, print. The
farm is opened lazily (commands that need no data directory never touch
it) and closed when the command ends.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from vdfarm.cli.output import print_json
from vdfarm.service.context import Farm

DEFAULT_DATA_DIR = "/var/lib/vdfarm"


@dataclass
class CliState:
    """The global options given before the verb (and --json after it)."""

    data_dir: str = DEFAULT_DATA_DIR
    db_url: str | None = None
    json: bool = False


def cli_actor() -> str:
    """The audit actor of this command line: cli:<user>."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def state() -> CliState:
    return click.get_current_context().find_object(CliState) or CliState()


def open_farm() -> Farm:
    """Open the farm of the global --data-dir/--db; closed when the command ends.

    Raises NotInitialised, Invalid, Unavailable (shown as one error line).
    """
    current = state()
    farm = Farm.open(current.data_dir, current.db_url, actor=cli_actor())
    click.get_current_context().call_on_close(farm.close)
    return farm


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        found = ctx.find_object(CliState)
        if found is not None:
            found.json = True


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Accept --json after the verb too."""
    return click.option(
        "--json", "json_output", is_flag=True, expose_value=False, callback=_set_json,
        is_eager=True, help="Print machine-readable JSON.",
    )(command)


def emit(value: Any, human: Callable[[], None]) -> None:
    """Print VALUE as JSON if --json was given, else call HUMAN to print it."""
    if state().json:
        print_json(value)
    else:
        human()
