"""`vdfarm server …`: run this server (the stream service), list the farm's
servers, change a server's placement settings.

Rules: flags, help and output only. `server run` hands the farm it opened
to the daemon (vdfarm.daemon, imported lazily, so the other verbs never
load asyncio machinery) and exits with the daemon's status; it serves this
host's data directory, so it refuses --farm. `--advertise` is checked
before anything starts.
"""

from __future__ import annotations

from pathlib import Path

import click

from vdfarm.api.limits import ApiLimits
from vdfarm.api.server import ApiTlsError, check_tls_files
from vdfarm.cli.common import emit, json_option, open_farm, open_local_farm
from vdfarm.cli.output import print_table
from vdfarm.cli.params import RateText
from vdfarm.farm.windows import parse_rate
from vdfarm.nbd.limits import ConnectionLimits
from vdfarm.nbd.tls import TLSPolicy
from vdfarm.nbd.tls_config import TLSFilesError, TLSSettings
from vdfarm.service.servers import check_advertise
from vdfarm.service.validation import UNCHANGED


@click.group()
def server() -> None:
    """Run this provisioning server; list and configure the farm's servers."""


@server.command("run")
@click.option("--nbd-port", type=click.IntRange(0, 65535), default=10809, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--advertise",
    default=None,
    metavar="ADDR",
    help="The address or name devices and other servers reach this server at "
    "(login answers tell devices to stream from it) [default: --host, or "
    "the host name when --host is 0.0.0.0 or ::].",
)
@click.option(
    "--grace",
    "grace_seconds",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a device's write cache and lock outlive an unclean drop, "
    "so a reconnect continues where it was.",
)
@click.option(
    "--lease",
    "lease_seconds",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Lease of a private-mode lock; renewed every third of it while the "
    "device is connected, free by itself after a crash.",
)
@click.option(
    "--api-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port of the REST API (0: any free port).",
)
@click.option("--api-host", default=None, help="Address of the REST API [default: --host].")
@click.option("--no-api", is_flag=True, help="Serve NBD only, no REST API.")
@click.option(
    "--auto-rebalance",
    "auto_rebalance_every",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Run the automatic rebalance every SECONDS (one server of the farm "
    "runs it at a time; 0: never).",
)
@click.option(
    "--api-tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Serve the REST API over HTTPS with this PEM certificate (TLS 1.2+).",
)
@click.option(
    "--api-tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The certificate's PEM key [default: inside --api-tls-cert].",
)
@click.option(
    "--api-max-body-kib",
    type=click.IntRange(min=1),
    default=ApiLimits.max_body_bytes // 1024,
    show_default=True,
    help="Largest REST request body accepted (413 beyond).",
)
@click.option(
    "--login-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=ApiLimits.login_rate_per_s,
    show_default=True,
    help="Logins per second allowed per source address (429 beyond) ...",
)
@click.option(
    "--login-burst",
    type=click.IntRange(min=1),
    default=ApiLimits.login_burst,
    show_default=True,
    help="... with bursts up to this many.",
)
@click.option(
    "--boot-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=ApiLimits.boot_rate_per_s,
    show_default=True,
    help="Boot path requests (/boot/ipxe, /boot/files) per second per source address ...",
)
@click.option(
    "--boot-burst",
    type=click.IntRange(min=1),
    default=ApiLimits.boot_burst,
    show_default=True,
    help="... with bursts up to this many (raise both where devices boot behind one NAT).",
)
@click.option(
    "--login-reservations",
    type=click.IntRange(min=1),
    default=ApiLimits.reservations_per_source,
    show_default=True,
    help="Devices one source address without a token may reserve at once by logging in.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=0),
    default=ConnectionLimits.max_connections,
    show_default=True,
    help="NBD connections at once (0: no bound).",
)
@click.option(
    "--max-connections-per-address",
    type=click.IntRange(min=0),
    default=ConnectionLimits.max_per_address,
    show_default=True,
    help="NBD connections from one client address (0: no bound).",
)
@click.option(
    "--max-handshaking",
    type=click.IntRange(min=0),
    default=ConnectionLimits.max_handshaking,
    show_default=True,
    help="NBD connections still in the handshake (0: no bound).",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(min=0),
    default=ConnectionLimits.handshake_timeout_s,
    show_default=True,
    metavar="SECONDS",
    help="Close an NBD connection that has not chosen its export by then (0: never).",
)
@click.option(
    "--max-reply-buffer-kib",
    type=click.IntRange(min=0),
    default=ConnectionLimits.max_reply_buffer // 1024,
    show_default=True,
    help="Replies queued for a client before its requests stop being read (0: no bound).",
)
@click.option(
    "--list-exports",
    is_flag=True,
    help="Answer NBD_OPT_LIST with the device names (off: an empty list).",
)
@click.option(
    "--transfer-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The only directory whose files `vdisk import`/`export` through the REST API "
    "may read or write [default: DATA_DIR/transfer].",
)
@click.option(
    "--tls",
    "tls_policy",
    type=click.Choice([p.value for p in TLSPolicy]),
    default=TLSPolicy.OFF.value,
    show_default=True,
    help="NBD over TLS (NBD_OPT_STARTTLS, TLS 1.2+): off, optional (plain clients "
    "too) or require (recommended; off is the default so existing plain clients "
    "keep working).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The NBD server's PEM certificate (needed by --tls optional/require).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The PEM key of --tls-cert.",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM CA: TLS clients must show a certificate it signed, whose CN/DNS names "
    "name the device it may open (or 'admin': every device and vdisk/NAME).",
)
@click.option(
    "--no-replication",
    is_flag=True,
    help="Do not pull versions this server's stores lack from the other servers.",
)
@click.option(
    "--inventory-interval",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How often the store's file names and sizes are checked against the manifests.",
)
@click.option(
    "--rehash-interval",
    type=click.FloatRange(min=1),
    default=6 * 3600.0,
    show_default=True,
    metavar="SECONDS",
    help="How often every file of the store is re-hashed (a file that changed behind "
    "vdfarm's back is quarantined and fetched again); counted from the last re-hash, "
    "across restarts.",
)
@click.option(
    "--max-replication-rate",
    type=RateText(),
    default=None,
    help="This server's own cap on the copies it receives (RATE as for `store set "
    "--max-rate`); a store's cap still holds: the lower one wins.",
)
@click.option(
    "--peer-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM CA that signed the other servers' API certificates (for replication "
    "over HTTPS) [default: the system's CAs].",
)
def run_cmd(
    nbd_port: int,
    host: str,
    advertise: str | None,
    grace_seconds: float,
    lease_seconds: float,
    api_port: int,
    api_host: str | None,
    no_api: bool,
    auto_rebalance_every: float,
    api_tls_cert: Path | None,
    api_tls_key: Path | None,
    api_max_body_kib: int,
    login_rate: float,
    login_burst: int,
    boot_rate: float,
    boot_burst: int,
    login_reservations: int,
    max_connections: int,
    max_connections_per_address: int,
    max_handshaking: int,
    handshake_timeout: float,
    max_reply_buffer_kib: int,
    list_exports: bool,
    transfer_dir: Path | None,
    tls_policy: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    no_replication: bool,
    inventory_interval: float,
    rehash_interval: float,
    max_replication_rate: str | None,
    peer_ca: Path | None,
) -> int:
    """Serve the vDisks of this store over NBD (and the REST API) until SIGTERM/SIGINT."""
    from vdfarm.daemon.parts import ServerOptions
    from vdfarm.daemon.run import check_nbd_tls, run_server

    try:
        nbd_tls = TLSSettings(TLSPolicy(tls_policy), tls_cert, tls_key, tls_ca)
        check_nbd_tls(nbd_tls)
    except (ValueError, TLSFilesError) as exc:
        raise click.UsageError(str(exc)) from exc
    if api_tls_key is not None and api_tls_cert is None:
        raise click.UsageError("--api-tls-key needs --api-tls-cert")
    if api_tls_cert is not None:
        try:
            check_tls_files(api_tls_cert, api_tls_key)
        except ApiTlsError as exc:
            raise click.UsageError(str(exc)) from exc
    farm = open_local_farm("server run")
    if advertise is not None:
        check_advertise(advertise)
    return run_server(
        farm,
        ServerOptions(
            host=host,
            nbd_port=nbd_port,
            grace_seconds=grace_seconds,
            lease_seconds=lease_seconds,
            api_host=api_host,
            api_port=None if no_api else api_port,
            auto_rebalance_every=auto_rebalance_every,
            advertise=advertise,
            api_tls_cert=api_tls_cert,
            api_tls_key=api_tls_key,
            transfer_dir=transfer_dir,
            api_limits=ApiLimits(
                max_body_bytes=api_max_body_kib * 1024,
                login_rate_per_s=login_rate,
                login_burst=login_burst,
                reservations_per_source=login_reservations,
                boot_rate_per_s=boot_rate,
                boot_burst=boot_burst,
            ),
            nbd_limits=ConnectionLimits(
                max_connections=max_connections,
                max_per_address=max_connections_per_address,
                max_handshaking=max_handshaking,
                handshake_timeout_s=handshake_timeout,
                max_reply_buffer=max_reply_buffer_kib * 1024,
                list_exports=list_exports,
            ),
            nbd_tls=nbd_tls,
            replication=not no_replication,
            inventory_every=inventory_interval,
            rehash_every=rehash_interval,
            replication_max_rate_bps=parse_rate(max_replication_rate or "none"),
            peer_ca=peer_ca,
        ),
    )


@server.command("list")
@json_option
def list_cmd() -> None:
    """List the servers of the farm: up/down, load, limits, store, vdfarm version."""
    infos = open_farm().servers.list()
    emit(
        infos,
        lambda: print_table(
            [
                "NAME",
                "STATE",
                "LAST HEARTBEAT",
                "CONNECTED",
                "BOOTING",
                "POWER",
                "MAX BOOTING",
                "SUBNET",
                "HOST",
                "NBD PORT",
                "API PORT",
                "STORE",
                "VERSION",
            ],
            [
                (
                    i.name,
                    "up" if i.up else "down",
                    i.last_heartbeat,
                    i.connected,
                    i.booting,
                    f"{i.power_rating:g}",
                    i.max_booting,
                    i.subnet,
                    i.hostname,
                    i.nbd_port,
                    i.api_port,
                    i.store_path,
                    i.version,
                )
                for i in infos
            ],
            empty="no servers",
        ),
    )


@server.command("set")
@click.argument("name")
@click.option(
    "--power-rating",
    type=float,
    default=None,
    help="Relative capacity (> 0): placement divides its load by it.",
)
@click.option(
    "--subnet",
    default=None,
    metavar="CIDR",
    help="The subnet its devices are on (for subnet affinity).",
)
@click.option("--no-subnet", is_flag=True, help="Remove the subnet.")
@click.option(
    "--max-booting",
    type=int,
    default=None,
    help="Devices booting from it at once before others go elsewhere (>= 1).",
)
@json_option
def set_cmd(
    name: str,
    power_rating: float | None,
    subnet: str | None,
    no_subnet: bool,
    max_booting: int | None,
) -> None:
    """Change the power rating, subnet or max-booting limit of server NAME."""
    if subnet is not None and no_subnet:
        raise click.UsageError("give --subnet or --no-subnet, not both")
    new_subnet = None if no_subnet else (UNCHANGED if subnet is None else subnet)
    info = open_farm().servers.configure(
        name, power_rating=power_rating, subnet=new_subnet, max_booting=max_booting
    )
    emit(
        info,
        lambda: click.echo(
            f"updated server {info.name}: power rating {info.power_rating:g}, "
            f"subnet {info.subnet or '-'}, max booting {info.max_booting}"
        ),
    )
