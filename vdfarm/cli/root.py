"""The `vdfarm` command tree: global options, the noun groups, error handling
(the console entry point, vdfarm.cli.main, runs `vdfarm agent` without it).

Rules:
- Global options (--data-dir, --db, --farm, --token-file, --token,
  --ca-file, --json) go before the verb; --json, --data-dir and --db are also accepted after it (every verb
  that opens a data directory gets them, `common.farm_options`; the value
  after the verb wins; --db still refuses --farm). With --farm URL the
  verbs drive that farm through its REST API (`common.open_farm`); verbs
  that need this host's data directory (init, server run, db upgrade, demo,
  image) refuse.
- Any ServiceError or usage error becomes ONE stderr line
  `vdfarm: error: <message>` with exit 1 (service) or 2 (usage); no
  traceback. Commands hold flags, help and output only — the logic is in
  `vdfarm.service`.
- The noun groups load when named (`NOUNS`): `vdfarm vdisk list` imports
  the database layer but never the REST API's server. `--help` loads them
  all to list them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from vdfarm.cli.common import (
    DEFAULT_DATA_DIR,
    CliState,
    cli_actor,
    emit,
    farm_options,
    json_option,
    refuse_remote,
    state,
)
from vdfarm.cli.oneline import run_with_one_line_errors
from vdfarm.service.errors import Invalid, ServiceError

# The noun groups: name -> (module, attribute), imported when named.
NOUNS: dict[str, tuple[str, str]] = {
    "vdisk": ("vdfarm.cli.vdisk", "vdisk"),
    "version": ("vdfarm.cli.version", "version"),
    "device": ("vdfarm.cli.device", "device"),
    "lock": ("vdfarm.cli.lock", "lock"),
    "audit": ("vdfarm.cli.audit", "audit"),
    "server": ("vdfarm.cli.server", "server"),
    "store": ("vdfarm.cli.store", "store"),
    "replication": ("vdfarm.cli.replication", "replication"),
    "image": ("vdfarm.cli.image", "image"),
    "rebalance": ("vdfarm.cli.rebalance", "rebalance"),
    "db": ("vdfarm.cli.db", "db"),
    "farm": ("vdfarm.cli.farm", "farm"),
    "token": ("vdfarm.cli.token", "token"),
    "agent": ("vdfarm.cli.agent", "agent"),
    "pxe": ("vdfarm.cli.pxe", "pxe"),
}


class VdfarmGroup(click.Group):
    """The root group: loads a noun group when it is named (`NOUNS`) and
    turns every expected failure into one error line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *NOUNS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in NOUNS:
            module, attribute = NOUNS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            if isinstance(command, click.Group):
                accept_farm_options_after_verbs(command, (cmd_name,))
            self.add_command(command, cmd_name)
        return command

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        run_with_one_line_errors(
            lambda: super(VdfarmGroup, self).main(
                args, prog_name or "vdfarm", complete_var, standalone_mode=False, **extra
            ),
            expected=(ServiceError,),
        )


@click.group(
    cls=VdfarmGroup, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--data-dir",
    envvar="VDFARM_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Data directory (env VDFARM_DATA_DIR).",
)
@click.option(
    "--db",
    "db_url",
    envvar="VDFARM_DB",
    default=None,
    help="Farm database URL (env VDFARM_DB; default sqlite:///DATA_DIR/farm.db).",
)
@click.option(
    "--farm",
    "farm_url",
    envvar="VDFARM_FARM",
    default=None,
    metavar="URL",
    help="Drive the farm whose REST API is at URL (http://HOST:API_PORT) instead "
    "of opening the database (env VDFARM_FARM).",
)
@click.option(
    "--token-file",
    envvar="VDFARM_TOKEN_FILE",
    default=None,
    metavar="PATH",
    help="File holding the API token for --farm (preferred over --token, which `ps` "
    "shows): from `vdfarm token add`, or DATA_DIR/api-token of that server "
    "(env VDFARM_TOKEN_FILE).",
)
@click.option(
    "--token",
    envvar="VDFARM_TOKEN",
    default=None,
    help="API token for --farm, on the command line (env VDFARM_TOKEN); prefer --token-file.",
)
@click.option(
    "--ca-file",
    envvar="VDFARM_CA_FILE",
    default=None,
    metavar="PATH",
    help="Trust only this CA (PEM) for an https:// --farm (env VDFARM_CA_FILE; "
    "default: the system's CAs).",
)
@click.option("--json", "json_output", is_flag=True, help="Print machine-readable JSON.")
@click.version_option(package_name="vdfarm", prog_name="vdfarm")
@click.pass_context
def cli(
    ctx: click.Context,
    data_dir: str,
    db_url: str | None,
    farm_url: str | None,
    token_file: str | None,
    token: str | None,
    ca_file: str | None,
    json_output: bool,
) -> None:
    """vdfarm: stream vDisks over NBD from a farm of provisioning servers."""
    if farm_url and db_url and ctx.get_parameter_source("db_url") == ParameterSource.COMMANDLINE:
        raise click.UsageError("give --farm (a farm's REST API) or --db, not both")
    ctx.obj = CliState(
        data_dir=data_dir,
        db_url=db_url or None,
        json=json_output,
        farm_url=farm_url or None,
        token=token or None,
        token_file=token_file or None,
        ca_file=ca_file or None,
    )


@cli.command("init")
@click.option("--name", default=None, help="This server's name (default: the host name).")
@json_option
def init_cmd(name: str | None) -> None:
    """Create the data directory, migrate the farm database, register this
    server, make the REST API's token (kept if there is one)."""
    refuse_remote("init")
    from vdfarm.service.context import Farm

    current = state()
    _check_token(Path(current.data_dir))
    farm = Farm.init(current.data_dir, current.db_url, server_name=name, actor=cli_actor())
    try:
        token_file = _make_token(farm.data_dir)
        result = {
            "data_dir": str(farm.data_dir),
            "server_name": farm.server_name,
            "server_uuid": farm.server_uuid,
            "store": str(farm.store.root),
            "api_token_file": str(token_file),
        }

        def human() -> None:
            click.echo(
                f"initialised {farm.data_dir}: server {farm.server_name} ({farm.server_uuid})"
            )
            click.echo(f"API token (for changes through the REST API and --farm): {token_file}")

        emit(result, human)
    finally:
        farm.close()


def _check_token(data_dir: Path) -> None:
    """Refuse (before init makes anything) an existing but unusable token file.

    Raises Invalid.
    """
    from vdfarm.api.auth import TokenFileError, read_token

    try:
        read_token(data_dir)
    except TokenFileError as exc:
        raise Invalid(str(exc)) from exc


def _make_token(data_dir: Path) -> Path:
    """DATA_DIR's API token file, made (mode 0600) if it has none.

    Raises Invalid (unusable token file, directory not writable).
    """
    from vdfarm.api.auth import TokenFileError, ensure_token, token_path

    try:
        ensure_token(data_dir)
    except (TokenFileError, OSError) as exc:
        raise Invalid(str(exc)) from exc
    return token_path(data_dir)


@cli.command("demo")
def demo_cmd() -> None:
    """Run the end-to-end demo in the data directory."""
    refuse_remote("demo")
    from vdfarm import demo

    demo.run(state().data_dir)


# Verbs that open no data directory: no --data-dir/--db after them.
NO_DATA_DIR = {("image", "sample"), ("agent", "status")}


def accept_farm_options_after_verbs(group: click.Group, path: tuple[str, ...] = ()) -> None:
    """Give every verb under GROUP (named PATH; but those in NO_DATA_DIR)
    --data-dir and --db after the verb, so `vdfarm server run --db URL`
    works."""
    for name, command in group.commands.items():
        where = (*path, name)
        if isinstance(command, click.Group):
            accept_farm_options_after_verbs(command, where)
        elif where not in NO_DATA_DIR and not any(
            p.name == "after_verb_db" for p in command.params
        ):
            farm_options(command)


accept_farm_options_after_verbs(cli)
