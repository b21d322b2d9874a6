"""`vdfarm store list`: which vDisk versions each server's store holds.

Rules: flags, help and output only; the facts are the servers' inventory
(`ServerService.inventory`, refreshed by each server's heartbeat). JSON is
the API's shape: [{server, versions: [{vdisk, version}]}].
"""

from __future__ import annotations

import click

from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import print_table

Inventory = dict[str, list[tuple[str, int]]]


def holdings(inventory: Inventory) -> list[dict]:
    """INVENTORY as [{server, versions: [{vdisk, version}]}], by server name."""
    return [
        {"server": server, "versions": [{"vdisk": v, "version": n} for v, n in held]}
        for server, held in sorted(inventory.items())
    ]


def rows(inventory: Inventory) -> list[tuple]:
    """(server, vDisk, versions) rows; a server that holds nothing gets one row."""
    out: list[tuple] = []
    for server, held in sorted(inventory.items()):
        vdisks: dict[str, list[int]] = {}
        for vdisk, number in held:
            vdisks.setdefault(vdisk, []).append(number)
        out += [(server, v, sorted(ns)) for v, ns in sorted(vdisks.items())] or [
            (server, None, None)
        ]
    return out


@click.group()
def store() -> None:
    """Inspect the servers' stores."""


@store.command("list")
@json_option
def list_cmd() -> None:
    """List the vDisk versions each server's store holds complete and verified."""
    inventory = open_farm().servers.inventory()
    emit(
        holdings(inventory),
        lambda: print_table(["SERVER", "VDISK", "VERSIONS"], rows(inventory), empty="no servers"),
    )
