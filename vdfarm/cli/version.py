"""`vdfarm version …`: open, promote, revert, pin, merge, delete, list and show vDisk versions.

Rules: flags, help and output only; every decision is the service's.
"""

from __future__ import annotations

from datetime import datetime

import click

from vdfarm.cli.audit import IsoTime
from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import fmt_size, print_fields, print_table
from vdfarm.cli.progress import shown
from vdfarm.client.local import LocalFarm
from vdfarm.service.boot_records import BootFileInfo
from vdfarm.service.merges import MergeResult
from vdfarm.service.version_rules import PROMOTE_TARGETS
from vdfarm.service.versions import VersionInfo

SHA_SHOWN = 12


def _merge_line(result: MergeResult) -> str:
    shape = "now a full base" if result.new_base else f"now on version {result.base}"
    line = (
        f"merged version(s) {', '.join(map(str, result.removed))} of vDisk {result.vdisk} "
        f"into version {result.kept} ({shape})"
    )
    if result.retained:
        line += f"; kept {', '.join(result.retained)} until the devices using them disconnect"
    return line


def boot_summary(info: VersionInfo) -> str | None:
    """Which boot files VERSION has, in a word ("kernel+initrd"), or None."""
    if info.boot is None:
        return None
    return "+".join(f.kind for f in info.boot.files())


def _boot_file(found: BootFileInfo | None) -> str | None:
    if found is None:
        return None
    return f"{found.sha256[:SHA_SHOWN]} ({fmt_size(found.size)})"


def boot_line(info: VersionInfo) -> str:
    """One line saying what version INFO boots over the network."""
    what = f"version {info.number} of vDisk {info.vdisk}"
    if info.boot is None:
        return f"{what} has no boot files"
    files = ", ".join(f"{f.kind} {_boot_file(f)}" for f in info.boot.files())
    return f"{what} boots {files}; kernel command line {info.boot.cmdline!r}"


def _rows(infos: list[VersionInfo]) -> list[tuple]:
    return [
        (
            i.number,
            i.access,
            i.parent,
            fmt_size(i.size),
            i.sha256[:SHA_SHOWN] if i.sha256 else None,
            i.created_at,
            len(i.devices),
            i.devices,
            i.boots,
            boot_summary(i),
        )
        for i in infos
    ]


@click.group()
def version() -> None:
    """Manage vDisk versions (maintenance → test → production)."""


@version.command("list")
@click.argument("vdisk")
@json_option
def list_cmd(vdisk: str) -> None:
    """List the versions of VDISK, oldest first."""
    infos = open_farm().versions.list(vdisk)
    emit(
        infos,
        lambda: print_table(
            [
                "VERSION",
                "ACCESS",
                "PARENT",
                "SIZE",
                "SHA256",
                "CREATED",
                "BOOTED",
                "DEVICES",
                "SERVES",
                "BOOT FILES",
            ],
            _rows(infos),
            empty=f"vDisk {vdisk} has no versions",
        ),
    )


@version.command("show")
@click.argument("vdisk")
@click.argument("number", type=click.IntRange(min=0))
@json_option
def show_cmd(vdisk: str, number: int) -> None:
    """Show version NUMBER of VDISK, with the boot files it boots."""
    info = open_farm().versions.show(vdisk, number)
    boot = info.boot
    emit(
        info,
        lambda: print_fields(
            [
                ("vdisk", info.vdisk),
                ("version", info.number),
                ("access", info.access),
                ("parent", info.parent),
                ("file", info.file),
                ("format", info.format),
                ("size", fmt_size(info.size)),
                ("sha256", info.sha256),
                ("created", info.created_at),
                ("sealed", info.sealed_at),
                ("production from", info.production_at),
                ("booted by", info.devices),
                ("serves", info.boots),
                ("kernel", _boot_file(boot.kernel) if boot else None),
                ("initrd", _boot_file(boot.initrd) if boot else None),
                ("kernel command line", repr(boot.cmdline) if boot else None),
            ]
        ),
    )


@version.command("new")
@click.argument("vdisk")
@json_option
def new_cmd(vdisk: str) -> None:
    """Open a maintenance version of VDISK on its newest version."""
    info = open_farm().versions.new(vdisk)
    emit(
        info,
        lambda: click.echo(
            f"opened version {info.number} of vDisk {vdisk} for maintenance "
            f"(on version {info.parent})"
        ),
    )


@version.command("promote")
@click.argument("vdisk")
@click.option(
    "--to",
    "to",
    type=click.Choice(PROMOTE_TARGETS),
    required=True,
    help="test: test devices boot it; production: every production device.",
)
@click.option(
    "--at",
    "at",
    type=IsoTime(),
    default=None,
    help="Production from this time on (ISO 8601; default: now).",
)
@click.option(
    "--when-replicated",
    is_flag=True,
    help="To production: switch once every up server of the vDisk's store holds the "
    "version (it is sealed, and test, now).",
)
@json_option
def promote_cmd(vdisk: str, to: str, at: datetime | None, when_replicated: bool) -> None:
    """Promote the newest version of VDISK to test or production."""
    if at is not None and when_replicated:
        raise click.UsageError("give --at or --when-replicated, not both")
    farm = open_farm()
    with shown(f"promote {vdisk}", local=isinstance(farm, LocalFarm)) as progress:
        result = farm.versions.promote(
            vdisk, to, at=at, when_replicated=when_replicated, progress=progress
        )

    def human() -> None:
        info = result.version
        at = info.production_at
        when = f" from {at.isoformat()}" if info.access == "pending" and at is not None else ""
        click.echo(f"version {info.number} of vDisk {vdisk} is now {info.access}{when}")
        if info.when_replicated:
            click.echo(
                f"it becomes {info.when_replicated} once every up server of its store holds "
                f"it (vdfarm replication wait {vdisk} --version {info.number})"
            )
        if result.merged:
            click.echo(_merge_line(result.merged))
        elif result.merge_skipped:
            click.echo(f"not merged automatically: {result.merge_skipped}")

    emit(result, human)


@version.command("revert")
@click.argument("vdisk")
@json_option
def revert_cmd(vdisk: str) -> None:
    """Take the newest version of VDISK back one step (production → test → maintenance)."""
    info = open_farm().versions.revert(vdisk)
    emit(info, lambda: click.echo(f"version {info.number} of vDisk {vdisk} is now {info.access}"))


@version.command("override")
@click.argument("vdisk")
@click.argument("number", type=click.IntRange(min=0), required=False)
@click.option("--clear", is_flag=True, help="Remove the pin.")
@json_option
def override_cmd(vdisk: str, number: int | None, clear: bool) -> None:
    """Pin the production devices of VDISK to version NUMBER (or --clear)."""
    if (number is None) == (not clear):
        raise click.UsageError("give either a version NUMBER or --clear")
    result = open_farm().versions.override(vdisk, None if clear else number)
    emit(
        result,
        lambda: click.echo(
            f"production devices of vDisk {vdisk} now boot version {result.version}"
            if result.version is not None
            else f"production devices of vDisk {vdisk} boot the newest production version"
        ),
    )


@version.command("merge")
@click.argument("vdisk")
@click.option("--new-base", is_flag=True, help="Write a new full base instead of one delta.")
@json_option
def merge_cmd(vdisk: str, new_base: bool) -> None:
    """Fold the versions of VDISK into one delta on its base (or a new base)."""
    farm = open_farm()
    with shown(f"merge {vdisk}") as progress:  # a remote merge is a job: it reports too
        result = farm.versions.merge(vdisk, new_base=new_base, progress=progress)
    emit(result, lambda: click.echo(_merge_line(result)))


@version.command("delete")
@click.argument("vdisk")
@json_option
def delete_cmd(vdisk: str) -> None:
    """Delete the newest version of VDISK (never the base)."""
    info = open_farm().versions.delete(vdisk)
    emit(info, lambda: click.echo(f"deleted version {info.number} of vDisk {vdisk}"))
