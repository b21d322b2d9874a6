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
@click.option("--api-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port of the REST API (0: any free port).")
@click.option("--api-host", default=None, help="Address of the REST API [default: --host].")
@click.option("--no-api", is_flag=True, help="Serve NBD only, no REST API.")
def run_cmd(nbd_port: int, host: str, grace_seconds: float, lease_seconds: float,
            api_port: int, api_host: str | None, no_api: bool) -> None:
    """Serve the vDisks of this store over NBD (and the REST API) until SIGTERM/SIGINT."""
    from vdfarm.stream.server import run_server

    run_server(open_farm(), host, nbd_port, grace_seconds, lease_seconds,
               api_host=api_host, api_port=None if no_api else api_port)


@server.command("list")
@json_option
def list_cmd() -> None:
    """List the servers of the farm: up/down, load, limits, store, vdfarm version."""
    infos = open_farm().servers.list()
    emit(infos, lambda: print_table(
        ["NAME", "STATE", "LAST HEARTBEAT", "CONNECTED", "BOOTING", "POWER", "MAX BOOTING",
         "SUBNET", "HOST", "NBD PORT", "API PORT", "STORE", "VERSION"],
        [(i.name, "up" if i.up else "down", i.last_heartbeat, i.connected, i.booting,
          f"{i.power_rating:g}", i.max_booting, i.subnet, i.hostname, i.nbd_port,
          i.api_port, i.store_path, i.version) for i in infos],
        empty="no servers"))
