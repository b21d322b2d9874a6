"""What every CLI command shares: global options, opening the farm, output mode.

Rules: commands are thin — parse flags, call ONE service method, print. The
farm is opened lazily (commands that need no data directory never touch
it) and closed when the command ends. `open_farm` is the one place that
decides local or remote: with --farm URL it is a `FarmClient` over that
farm's REST API (the token from --token-file, preferred, or --token; the
server's certificate checked against --ca-file for a private CA), else a
`LocalFarm` over the data directory; both have the
same methods and answer the same records. Commands that only work on this
host's data directory call `open_local_farm` / `refuse_remote`.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from vdfarm.cli.output import print_json
from vdfarm.client.local import LocalFarm
from vdfarm.service.context import Farm
from vdfarm.service.errors import Invalid, NotFound

if TYPE_CHECKING:
    from vdfarm.client.farm import FarmClient

DEFAULT_DATA_DIR = "/var/lib/vdfarm"
MAX_TOKEN_LINE = 4096


@dataclass
class CliState:
    """The global options given before the verb (and --json, --data-dir and
    --db after it, which win)."""

    data_dir: str = DEFAULT_DATA_DIR
    db_url: str | None = None
    json: bool = False
    farm_url: str | None = None
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None


def cli_actor() -> str:
    """The audit actor of this command line: cli:<user>."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def state() -> CliState:
    return click.get_current_context().find_object(CliState) or CliState()


def read_token_file(path: str) -> str:
    """The token in the file PATH (its first line, stripped).

    Raises click.UsageError (missing, unreadable, empty).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.readline(MAX_TOKEN_LINE).strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise click.UsageError(f"cannot read the token file {path}: {reason}") from exc
    if not token:
        raise click.UsageError(f"the token file {path} is empty")
    return token


def remote_token(current: CliState) -> str | None:
    """The API token of --token-file (preferred: not shown by `ps`) or --token.

    Raises click.UsageError (both given, unusable file).
    """
    if current.token_file is not None and current.token is not None:
        raise click.UsageError("give --token-file or --token, not both")
    if current.token_file is not None:
        return read_token_file(current.token_file)
    return current.token


def open_farm() -> LocalFarm | FarmClient:
    """The farm of the global options, closed when the command ends: the
    remote farm of --farm URL (with --token-file or --token, and --ca-file),
    else the local one of --data-dir/--db.

    Raises click.UsageError, NotInitialised, Invalid, Unavailable (shown as
    one error line).
    """
    current = state()
    if current.farm_url is not None:
        from vdfarm.client.farm import FarmClient

        client = FarmClient(current.farm_url, remote_token(current), ca_file=current.ca_file)
        click.get_current_context().call_on_close(client.close)
        return client
    return LocalFarm(open_local_farm())


def refuse_remote(what: str) -> None:
    """Stop here (usage error) if --farm was given: WHAT works on this host only."""
    if state().farm_url is not None:
        raise click.UsageError(
            f"{what} works on this host's data directory only; run it without --farm"
        )


def open_local_farm(what: str | None = None) -> Farm:
    """Open the farm of the global --data-dir/--db; closed when the command
    ends. WHAT (a verb that needs this host) is refused with --farm.

    Raises click.UsageError, NotInitialised, Invalid, Unavailable.
    """
    if what is not None:
        refuse_remote(what)
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
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        is_eager=True,
        help="Print machine-readable JSON.",
    )(command)


def _set_data_dir(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        found = ctx.find_object(CliState)
        if found is not None:
            found.data_dir = value


def _set_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        found = ctx.find_object(CliState)
        if found is not None:
            if found.farm_url is not None:
                raise click.UsageError("give --farm (a farm's REST API) or --db, not both")
            found.db_url = value or None


def farm_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Accept --data-dir and --db after the verb too (they win over the ones
    before it). Works on a function or an existing click.Command."""
    command = click.option(
        "--db",
        "after_verb_db",
        default=None,
        expose_value=False,
        callback=_set_db,
        is_eager=True,
        metavar="URL",
        help="Farm database URL (as before the verb; default sqlite:///DATA_DIR/farm.db).",
    )(command)
    return click.option(
        "--data-dir",
        "after_verb_data_dir",
        default=None,
        expose_value=False,
        callback=_set_data_dir,
        is_eager=True,
        metavar="PATH",
        help="Data directory (as before the verb).",
    )(command)


@contextmanager
def typed_wrong() -> Iterator[None]:
    """Turn the service's refusal of what was typed (an unknown name, a bad
    value: NotFound, Invalid) into a usage error: one line, exit 2, as for
    a flag click refused. For verbs whose every argument is a name or a
    value the user typed."""
    try:
        yield
    except (NotFound, Invalid) as exc:
        raise click.UsageError(exc.message) from exc


def emit(value: Any, human: Callable[[], None]) -> None:
    """Print VALUE as JSON if --json was given, else call HUMAN to print it."""
    if state().json:
        print_json(value)
    else:
        human()
