"""`vdfarm device …`: add, list, show, assign, set, delete target devices;
`login` shows where one should stream from.

Rules: flags, help and output only; every decision is the service's.
A device may be named by its name or its MAC wherever NAME is asked.
"""

from __future__ import annotations

from typing import Any

import click

from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import fmt_time, print_fields, print_table
from vdfarm.farm.models import DEVICE_TYPES
from vdfarm.service.devices import DeviceInfo
from vdfarm.service.login import LoginResult, ServerEndpoint
from vdfarm.service.validation import UNCHANGED

TYPE = click.Choice(DEVICE_TYPES)


MIB = 1024 * 1024


def _show(info: DeviceInfo) -> None:
    fields = [
        ("name", info.name),
        ("mac", info.mac),
        ("type", info.device_type),
        ("vdisk", info.vdisk),
        ("description", info.description),
        ("created", info.created_at),
    ]
    live = info.session
    if live is None:
        fields.append(("connected", "no"))
    else:
        used, limit = live["write_cache_used_bytes"], live["write_cache_limit_bytes"]
        fields += [
            ("connected", f"to {live['server']} since {live['connected_at']}"),
            ("booted", f"{live['vdisk']} version {live['version']}"),
            (
                "write cache",
                "-"
                if used is None
                else f"{used / MIB:.1f} MiB used" + (f" of {limit / MIB:.0f} MiB" if limit else ""),
            ),
        ]
    fields.append(("failovers", _failovers(info.failovers)))
    fields.append(("boot stage", _stage(info)))
    for stage, at in (info.boot_stages or {}).items():
        fields.append((f"  {stage}", fmt_time(at) if at is not None else "-"))
    fields.append(("last seen", info.last_seen))
    if info.auto_added:
        fields.append(("auto-added", "yes"))
    print_fields(fields)


def _stage(info: DeviceInfo) -> str:
    """`STAGE since T` (`, STUCK` when stuck), or `-`: no boot recorded."""
    if info.stage is None:
        return "-"
    return f"{info.stage} since {fmt_time(info.stage_at)}" + (", STUCK" if info.stuck else "")


def _failovers(summary: dict[str, Any] | None) -> str:
    """`N, last at T from A to B (pause P ms)`, or `none`."""
    if not summary:
        return "none"
    last = summary["last"]
    return (
        f"{summary['count']}, last at {last['at']} from {last.get('from')} "
        f"to {last.get('to')} (pause {last.get('pause_ms')} ms)"
    )


def _endpoint(server: ServerEndpoint) -> str:
    return f"{server.name} ({server.host}:{server.nbd_port if server.nbd_port else '-'})"


def _show_login(result: LoginResult) -> None:
    print_fields(
        [
            ("device", result.device),
            ("vdisk", f"{result.vdisk} version {result.version}"),
            ("server", _endpoint(result.server)),
            ("alternatives", [_endpoint(s) for s in result.alternatives]),
            ("reason", result.reason),
            ("sha256", result.sha256 or "-"),
            ("size", result.size),
            ("write cache", result.write_cache_type),
            ("failover", "yes" if result.failover else "no (its writes live on one server)"),
        ]
    )


@click.group()
def device() -> None:
    """Manage target devices (machines that boot from a vDisk)."""


@device.command("add")
@click.argument("name")
@click.option("--mac", default=None, help="MAC address (aa:bb:cc:dd:ee:ff, AA-BB-…, aabbcc…).")
@click.option("--vdisk", default=None, help="vDisk to assign.")
@click.option("--type", "device_type", type=TYPE, default="production", show_default=True)
@click.option("--description", default="")
@json_option
def add_cmd(
    name: str, mac: str | None, vdisk: str | None, device_type: str, description: str
) -> None:
    """Add device NAME."""
    info = open_farm().devices.add(
        name, mac=mac, vdisk=vdisk, device_type=device_type, description=description
    )
    emit(
        info,
        lambda: click.echo(
            f"added device {info.name}" + (f" with vDisk {info.vdisk}" if info.vdisk else "")
        ),
    )


@device.command("list")
@json_option
def list_cmd() -> None:
    """List the devices of the farm."""
    infos = open_farm().devices.list()
    emit(
        infos,
        lambda: print_table(
            ["NAME", "MAC", "TYPE", "VDISK", "STAGE", "SINCE", "STUCK", "LAST SEEN", "DESCRIPTION"],
            [
                (
                    i.name,
                    i.mac,
                    i.device_type,
                    i.vdisk,
                    i.stage,
                    i.stage_at,
                    "STUCK" if i.stuck else "",
                    i.last_seen,
                    i.description,
                )
                for i in infos
            ],
            empty="no devices",
        ),
    )


@device.command("show")
@click.argument("name")
@json_option
def show_cmd(name: str) -> None:
    """Show device NAME (a name or a MAC)."""
    info = open_farm().devices.show(name)
    emit(info, lambda: _show(info))


@device.command("assign")
@click.argument("name")
@click.argument("vdisk", required=False)
@click.option("--none", "unassign", is_flag=True, help="Leave the device without a vDisk.")
@json_option
def assign_cmd(name: str, vdisk: str | None, unassign: bool) -> None:
    """Assign VDISK to device NAME (or --none)."""
    if (vdisk is None) == (not unassign):
        raise click.UsageError("give either a VDISK or --none")
    info = open_farm().devices.assign(name, None if unassign else vdisk)
    emit(
        info,
        lambda: click.echo(
            f"device {info.name} now boots {info.vdisk}"
            if info.vdisk
            else f"device {info.name} has no vDisk"
        ),
    )


@device.command("set")
@click.argument("name")
@click.option("--type", "device_type", type=TYPE, default=None)
@click.option("--mac", default=None, help="New MAC address.")
@click.option("--no-mac", is_flag=True, help="Remove the MAC address.")
@click.option("--description", default=None)
@json_option
def set_cmd(
    name: str, device_type: str | None, mac: str | None, no_mac: bool, description: str | None
) -> None:
    """Change the type, MAC or description of device NAME."""
    if mac is not None and no_mac:
        raise click.UsageError("give --mac or --no-mac, not both")
    new_mac = None if no_mac else (UNCHANGED if mac is None else mac)
    info = open_farm().devices.set(
        name, device_type=device_type, mac=new_mac, description=description
    )
    emit(info, lambda: click.echo(f"updated device {info.name}"))


@device.command("delete")
@click.argument("name")
@json_option
def delete_cmd(name: str) -> None:
    """Delete device NAME (refused while it holds a vDisk lock)."""
    info = open_farm().devices.delete(name)
    emit(info, lambda: click.echo(f"deleted device {info.name}"))


@device.command("login")
@click.argument("name")
@click.option(
    "--client-ip",
    default=None,
    help="The device's IP address (decides subnet affinity; default: none).",
)
@json_option
def login_cmd(name: str, client_ip: str | None) -> None:
    """Show which server device NAME (a name or a MAC) should stream from now,
    and the alternatives, best first (what its login would answer; reserves
    nothing)."""
    result = open_farm().login(name, client_ip, reserve=False)
    emit(result, lambda: _show_login(result))
