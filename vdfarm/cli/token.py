"""`vdfarm token …`: add, list, revoke the farm's REST API tokens.

Rules: flags, help and output only; every decision is the service's
(`vdfarm.service.tokens`). `add` prints the secret once, alone on stdout
(it is stored nowhere, only its hash); `list` never prints a secret. Tokens live in the
farm database, so one made here works on every server of the farm. With
--farm the verbs go through the API and need an admin token.
"""

from __future__ import annotations

import click

from vdfarm.cli.common import cli_actor, emit, json_option, open_farm
from vdfarm.cli.output import print_table
from vdfarm.farm.models import TOKEN_ROLES


@click.group()
def token() -> None:
    """Make, list and revoke REST API tokens (roles: read, operator, admin)."""


@token.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(TOKEN_ROLES),
    required=True,
    help="read: GET only; operator: devices and their sessions too; admin: everything.",
)
@json_option
def add_cmd(name: str, role: str) -> None:
    """Make token NAME with ROLE and print its secret, alone on one line, this
    once (e.g. `vdfarm token add relay --role operator > relay.token`; keep
    the file readable by its user only and pass it with --token-file)."""
    made = open_farm().tokens.add(name, role, actor=cli_actor())
    emit(made, lambda: click.echo(made.secret))


@token.command("list")
@json_option
def list_cmd() -> None:
    """List every token (revoked ones too): name, role, made, last used, revoked."""
    infos = open_farm().tokens.list()
    emit(
        infos,
        lambda: print_table(
            ["NAME", "ROLE", "CREATED", "BY", "LAST USED", "REVOKED"],
            [
                (i.name, i.role, i.created_at, i.created_by, i.last_used_at, i.revoked_at)
                for i in infos
            ],
            empty="no tokens (the servers' api-token files still work)",
        ),
    )


@token.command("revoke")
@click.argument("name")
@json_option
def revoke_cmd(name: str) -> None:
    """Revoke token NAME: every server refuses it from its next request."""
    info = open_farm().tokens.revoke(name, actor=cli_actor())
    emit(info, lambda: click.echo(f"revoked token {info.name}"))
