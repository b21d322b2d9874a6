"""`vdfarm store list`: which vDisk versions each server's store holds;
`vdfarm store verify`: re-hash this server's store now, quarantining what
changed behind vdfarm's back (the running server fetches it again);
`vdfarm store sets|add|set`: the store sets (which vDisks go to which
servers, the copy cap and windows).

Rules: flags, help and output only; the facts of `list` are the servers'
inventory (`ServerService.inventory`, refreshed by each server's
heartbeat); its JSON is the API's shape: [{server, versions: [{vdisk,
version}]}]. A window, rate or name the farm refuses is a usage error (one
line, exit 2) and changes nothing.
"""

from __future__ import annotations

import click

from vdfarm.cli.common import emit, json_option, open_farm, open_local_farm, typed_wrong
from vdfarm.cli.output import print_table
from vdfarm.cli.params import (
    RATE_OPTION_HELP,
    WINDOW_OPTION_HELP,
    NameList,
    RateText,
    WindowText,
)
from vdfarm.farm.windows import rate_text
from vdfarm.replication.drift import find_drift
from vdfarm.replication.verify import quarantine_drifted
from vdfarm.service.store_sets import StoreSetInfo

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
    """Inspect the servers' stores; manage store sets (which vDisks go to
    which servers, how fast and when they are copied)."""


@store.command("list")
@json_option
def list_cmd() -> None:
    """List the vDisk versions each server's store holds complete and verified."""
    inventory = open_farm().servers.inventory()
    emit(
        holdings(inventory),
        lambda: print_table(["SERVER", "VDISK", "VERSIONS"], rows(inventory), empty="no servers"),
    )


def _set_rows(infos: list[StoreSetInfo]) -> list[tuple]:
    return [
        (
            i.name,
            i.servers or "all",
            rate_text(i.max_rate_bps),
            i.windows or "always",
            i.vdisks,
        )
        for i in infos
    ]


def _print_sets(infos: list[StoreSetInfo]) -> None:
    print_table(
        ["STORE", "SERVERS", "MAX RATE", "WINDOWS", "VDISKS"], _set_rows(infos), empty="no stores"
    )


@store.command("sets")
@json_option
def sets_cmd() -> None:
    """List the store sets: their servers (all: every server of the farm),
    copy cap, copy windows and vDisks."""
    infos = open_farm().replication.store_sets()
    emit(infos, lambda: _print_sets(infos))


@store.command("add")
@click.argument("name")
@click.option(
    "--servers",
    type=NameList(),
    default=None,
    help="The servers holding its vDisks (s1,s2; default: every server, now and later).",
)
@click.option("--max-rate", type=RateText(), default=None, help=RATE_OPTION_HELP)
@click.option("--window", "windows", type=WindowText(), multiple=True, help=WINDOW_OPTION_HELP)
@json_option
def add_cmd(
    name: str, servers: tuple[str, ...] | None, max_rate: str | None, windows: tuple[str, ...]
) -> None:
    """Add store set NAME (vDisks join it with `vdisk import --store` or
    `vdisk set --store`)."""
    farm = open_farm()
    with typed_wrong():
        info = farm.replication.add_store(name, servers, max_rate, windows)
    emit(info, lambda: click.echo(f"added store {info.name}"))


@store.command("set")
@click.argument("name")
@click.option(
    "--servers",
    type=NameList(),
    default=None,
    help="The servers holding its vDisks (s1,s2), or all (every server of the farm).",
)
@click.option("--max-rate", type=RateText(), default=None, help=RATE_OPTION_HELP)
@click.option("--window", "windows", type=WindowText(), multiple=True, help=WINDOW_OPTION_HELP)
@click.option("--no-window", is_flag=True, help="Copy at any time (remove every window).")
@json_option
def set_cmd(
    name: str,
    servers: tuple[str, ...] | None,
    max_rate: str | None,
    windows: tuple[str, ...],
    no_window: bool,
) -> None:
    """Change the servers, copy cap or copy windows of store set NAME."""
    if windows and no_window:
        raise click.UsageError("give --window or --no-window, not both")
    new_windows = () if no_window else (windows or None)
    farm = open_farm()
    with typed_wrong():
        info = farm.replication.set_store(name, servers, max_rate, new_windows)
    emit(info, lambda: click.echo(f"updated store {info.name}"))


@store.command("verify")
@json_option
def verify_cmd() -> None:
    """Re-hash every sealed file of THIS server's store (but private vDisks',
    which their devices write) against its manifest
    now (the server does it every --rehash-interval). A file that changed
    behind vdfarm's back is moved to the store's .quarantine directory and
    out of the manifest; the running server fetches it again from a peer.
    Exits 1 if any file was quarantined."""
    farm = open_local_farm("store verify")
    kept = {v.name for v in farm.vdisks.list() if v.access_mode != "private"}  # private: moves
    gone = quarantine_drifted(farm.store, find_drift(farm.store, True, kept), farm.now())
    farm.servers.record_inventory()
    found = [
        {
            "vdisk": q.drift.vdisk,
            "file": q.drift.file_name,
            "version": q.drift.version,
            "why": q.drift.why,
            "quarantined_to": str(q.moved_to) if q.moved_to else None,
        }
        for q in gone
    ]
    emit(
        found,
        lambda: print_table(
            ["VDISK", "FILE", "VERSION", "WHY", "QUARANTINED TO"],
            [tuple(f.values()) for f in found],
            empty="every file of this store matches its manifest",
        ),
    )
    if found:
        raise SystemExit(1)
