"""`vdfarm pxe dnsmasq-config`: dnsmasq's DHCP/TFTP configuration that sends
the farm's devices from PXE power-on to the farm's iPXE boot script.

Rules: flags, help and output only; vdfarm.boot.inputs checks every typed
value (a refusal is a usage error: one line, exit 2), vdfarm.boot.dnsmasq
and .chain write the text, vdfarm.boot.files does the host's part. The
farm is opened only when no --server is given (the servers' API addresses,
as `server list` shows them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vdfarm.boot.chain import CHAIN_SCRIPT, chain_script
from vdfarm.boot.dnsmasq import IPXE_DIR, DnsmasqSettings, dnsmasq_config, uses_chain_script
from vdfarm.boot.files import CONFIG_NAME, interface_network, missing_loaders, write_boot_dir
from vdfarm.boot.inputs import (
    FullDhcp,
    ProxyDhcp,
    ServerUrl,
    parse_interface,
    parse_range,
    parse_server_url,
    parse_subnet,
    parse_tftp_root,
)
from vdfarm.cli.common import emit, json_option, open_farm


class Checked(click.ParamType):
    """A value checked by one of vdfarm.boot.inputs' parsers."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group()
def pxe() -> None:
    """Network boot with stock parts: dnsmasq's DHCP and TFTP for the farm's devices."""


def _farm_servers() -> tuple[ServerUrl, ...]:
    """The REST APIs of the farm's servers, as `server list` shows them.

    Raises click.UsageError (none, or one whose address makes no URL).
    """
    urls = []
    for info in open_farm().servers.list():
        if info.api_port is None:
            continue
        host = f"[{info.hostname}]" if ":" in info.hostname else info.hostname
        scheme = "https" if info.api_tls else "http"
        try:
            urls.append(parse_server_url(f"{scheme}://{host}:{info.api_port}"))
        except ValueError as exc:
            raise click.UsageError(
                f"server {info.name}'s API address makes no boot URL ({exc}); give --server URL"
            ) from exc
    if not urls:
        raise click.UsageError("the farm has no server with a REST API: give --server URL")
    return tuple(urls)


def _dhcp(interface: str, proxy_for: Any, dhcp_range: Any) -> ProxyDhcp | FullDhcp:
    if proxy_for is not None and dhcp_range is not None:
        raise click.UsageError("give --proxy-for SUBNET or --range START,END, not both")
    if dhcp_range is not None:
        assert isinstance(dhcp_range, FullDhcp)
        return dhcp_range
    if proxy_for is not None:
        return ProxyDhcp(proxy_for)
    try:
        return ProxyDhcp(parse_subnet(str(interface_network(interface))))
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise click.UsageError(
            f"cannot tell the subnet of {interface} ({reason}): "
            "give --proxy-for SUBNET or --range START,END"
        ) from exc


@pxe.command("dnsmasq-config")
@click.option(
    "--interface",
    required=True,
    type=Checked("IF", parse_interface),
    help="The interface on the devices' network dnsmasq answers on.",
)
@click.option(
    "--proxy-for",
    type=Checked("SUBNET", parse_subnet),
    default=None,
    help="Proxy-DHCP beside the site's DHCP server for the devices of SUBNET "
    "(e.g. 192.168.1.0/24) [default: the interface's own subnet].",
)
@click.option(
    "--range",
    "dhcp_range",
    type=Checked("START,END[,NETMASK]", parse_range),
    default=None,
    help="Full DHCP instead: dnsmasq hands out START..END itself (no other DHCP "
    "server on that network).",
)
@click.option(
    "--server",
    "servers",
    multiple=True,
    type=Checked("URL", parse_server_url),
    help="A farm server's REST API, http://HOST:PORT (again for several: devices "
    "try them in turn) [default: every server of the farm with a REST API].",
)
@click.option(
    "--tftp-root",
    type=Checked("DIR", parse_tftp_root),
    default=None,
    help=f"The directory dnsmasq's TFTP serves undionly.kpxe and ipxe.efi from "
    f"[default: {IPXE_DIR}, Debian's ipxe package; with --write, DIR].",
)
@click.option(
    "--write",
    "write_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help=f"Write {CONFIG_NAME} into DIR instead of printing it, with {CHAIN_SCRIPT} "
    "(needed by several servers) and links to the iPXE loaders: DIR becomes the "
    "TFTP root.",
)
@json_option
def dnsmasq_config_cmd(
    interface: str,
    proxy_for: Any,
    dhcp_range: Any,
    servers: tuple[ServerUrl, ...],
    tftp_root: str | None,
    write_dir: Path | None,
) -> None:
    """Print dnsmasq's configuration for network-booting the farm's devices:
    proxy-DHCP (default) or full DHCP on one interface, TFTP of iPXE for BIOS
    and UEFI PXE clients, and for iPXE the farm's boot script URL."""
    if write_dir is not None and tftp_root is not None:
        raise click.UsageError("give --tftp-root or --write, not both (--write DIR is the root)")
    if write_dir is not None:
        try:
            tftp_root = parse_tftp_root(str(write_dir.absolute()))
        except ValueError as exc:
            raise click.UsageError(f"--write: {exc}") from exc
    dhcp = _dhcp(interface, proxy_for, dhcp_range)
    chosen = tuple(dict.fromkeys(servers)) or _farm_servers()
    if uses_chain_script(chosen, dhcp) and write_dir is None:
        why = (
            "several farm servers need" if len(chosen) > 1 else "a server name without a dot needs"
        )
        raise click.UsageError(
            f"{why} {CHAIN_SCRIPT} in the TFTP root beside the configuration: give --write DIR"
        )
    settings = DnsmasqSettings(interface, dhcp, chosen, tftp_root or IPXE_DIR)
    try:
        config = dnsmasq_config(settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    script = chain_script(chosen) if uses_chain_script(chosen, dhcp) else None
    written: list[Path] = []
    if write_dir is not None:
        try:
            written = write_boot_dir(write_dir.absolute(), config, script)
        except OSError as exc:
            raise click.UsageError(f"cannot write {write_dir}: {exc.strerror or exc}") from exc
    else:
        for path in missing_loaders(settings.tftp_root):
            click.echo(f"vdfarm: warning: {path} is missing (apt-get install ipxe)", err=True)
    result = {
        "config": config,
        "script": script,
        "servers": [str(s) for s in chosen],
        "written": [str(p) for p in written],
    }

    def human() -> None:
        if write_dir is None:
            click.echo(config, nl=False)
            return
        for path in written:
            click.echo(f"wrote {path}")
        click.echo(f"run: dnsmasq --conf-file={written[0]}")

    emit(result, human)
