"""`vdfarm server …`: run this server (the stream service), list the farm's servers.

Rules: flags, help and output only. `server run` imports the stream service
lazily, so the other verbs never load asyncio machinery.
"""

from __future__ import annotations

import click

from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import print_table


@click.group()
def server() -> None:
    """Run this provisioning server; list the farm's servers."""


@server.command("run")
@click.option("--nbd-port", type=click.IntRange(0, 65535), default=10809, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--grace", "grace_seconds", type=click.FloatRange(min=0), default=30.0,
              show_default=True,
              help="Seconds a device's write cache and lock outlive an unclean drop, "
                   "so a reconnect continues where it was.")
@click.option("--lease", "lease_seconds", type=click.FloatRange(min=1), default=30.0,
              show_default=True,
              help="Lease of a private-mode lock; renewed every third of it while the "
                   "device is connected, free by itself after a crash.")
def run_cmd(nbd_port: int, host: str, grace_seconds: float, lease_seconds: float) -> None:
    """Serve the vDisks of this store over NBD until SIGTERM/SIGINT."""
    from vdfarm.stream.server import run_server

    run_server(open_farm(), host, nbd_port, grace_seconds, lease_seconds)


@server.command("list")
@json_option
def list_cmd() -> None:
    """List the servers of the farm."""
    infos = open_farm().servers.list()
    emit(infos, lambda: print_table(
        ["NAME", "HOSTNAME", "NBD PORT", "API PORT", "VERSION", "LAST HEARTBEAT", "STORE"],
        [(i.name, i.hostname, i.nbd_port, i.api_port, i.version, i.last_heartbeat,
          i.store_path) for i in infos],
        empty="no servers"))
