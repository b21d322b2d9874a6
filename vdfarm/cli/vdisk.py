"""`vdfarm vdisk …`: import, list, show, set, delete, verify, repair, export
vDisks, and give their newest version boot files.

Rules: flags, help and output only; every decision is the service's.
`set --subnet-affinity` is the login service's setting and comes alone (two
service calls could half-succeed). With --farm, import and export name
files in the server's transfer directory (relative to it, or absolute
inside it; the server refuses anything else), and so does boot.
"""

from __future__ import annotations

from pathlib import Path

import click

from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import fmt_size, print_fields, print_table
from vdfarm.cli.progress import shown
from vdfarm.cli.version import boot_line
from vdfarm.client.local import LocalFarm
from vdfarm.farm.models import ACCESS_MODES, WRITE_CACHE_TYPES
from vdfarm.farm.placement import AFFINITIES
from vdfarm.service.errors import Invalid
from vdfarm.service.merges import EXPORT_FORMATS
from vdfarm.service.store_sets import DEFAULT_STORE
from vdfarm.service.validation import UNCHANGED
from vdfarm.service.vdisks import SOURCE_FORMATS, VdiskInfo

MODE = click.Choice(ACCESS_MODES)
CACHE = click.Choice(WRITE_CACHE_TYPES)
AFFINITY = click.Choice(AFFINITIES)


def _show(info: VdiskInfo) -> None:
    print_fields(
        [
            ("name", info.name),
            ("size", f"{fmt_size(info.size)} ({info.size} bytes)"),
            ("format", info.format),
            ("mode", info.access_mode),
            ("write cache", info.write_cache_type),
            (
                "cache limit",
                f"{info.write_cache_limit_mb} MiB" if info.write_cache_limit_mb else None,
            ),
            ("description", info.description),
            ("sha256", info.sha256),
            ("devices", info.devices),
            ("in this store", "yes" if info.in_store else "no"),
            ("max versions", info.max_versions),
            ("override", info.override_version),
            ("subnet affinity", info.subnet_affinity),
            ("require TLS", "yes" if info.require_tls else "no"),
            ("store", info.store),
            ("created", info.created_at),
        ]
    )


@click.group()
def vdisk() -> None:
    """Manage vDisks (disk images served to devices)."""


@vdisk.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--mode",
    type=MODE,
    default="standard",
    show_default=True,
    help="standard: many devices, read-only + write cache; private: one device, read/write.",
)
@click.option("--write-cache", type=CACHE, default="server-disk", show_default=True)
@click.option(
    "--cache-limit-mb",
    type=click.IntRange(min=1),
    default=None,
    help="Write-cache size limit in MiB.",
)
@click.option("--description", default="")
@click.option(
    "--format",
    "source_format",
    type=click.Choice(["auto", *SOURCE_FORMATS]),
    default="auto",
    show_default=True,
    help="Image format of FILE (vpc is VHD); auto detects it among these only. "
    "A raw disk is read as raw bytes, whatever its first bytes look like.",
)
@click.option(
    "--store",
    default=DEFAULT_STORE,
    show_default=True,
    help="The store set it belongs to (the servers it is copied to).",
)
@json_option
def import_cmd(
    name: str,
    file: Path,
    mode: str,
    write_cache: str,
    cache_limit_mb: int | None,
    description: str,
    source_format: str,
    store: str,
) -> None:
    """Import image FILE (raw, qcow2, vpc, vhdx, vmdk) as vDisk NAME
    (with --farm: a file in the server's transfer directory). A FILE that
    names any other file (backing file, external data file, vmdk extent) is
    refused."""
    farm = open_farm()
    with shown(f"import {name}", local=isinstance(farm, LocalFarm)) as progress:
        info = farm.vdisks.import_image(
            name,
            file,
            mode=mode,
            write_cache=write_cache,
            cache_limit_mb=cache_limit_mb,
            description=description,
            source_format=None if source_format == "auto" else source_format,
            store=store,
            progress=progress,
        )
    emit(
        info,
        lambda: click.echo(
            f"imported vDisk {info.name} ({fmt_size(info.size)}, {info.access_mode}, "
            f"write cache {info.write_cache_type})"
        ),
    )


@vdisk.command("list")
@json_option
def list_cmd() -> None:
    """List the vDisks of the farm."""
    infos = open_farm().vdisks.list()
    emit(
        infos,
        lambda: print_table(
            ["NAME", "SIZE", "MODE", "WRITE CACHE", "DEVICES", "IN STORE", "DESCRIPTION"],
            [
                (
                    i.name,
                    fmt_size(i.size),
                    i.access_mode,
                    i.write_cache_type,
                    len(i.devices),
                    "yes" if i.in_store else "no",
                    i.description,
                )
                for i in infos
            ],
            empty="no vDisks",
        ),
    )


@vdisk.command("show")
@click.argument("name")
@json_option
def show_cmd(name: str) -> None:
    """Show vDisk NAME."""
    info = open_farm().vdisks.show(name)
    emit(info, lambda: _show(info))


@vdisk.command("set")
@click.argument("name")
@click.option("--mode", type=MODE, default=None)
@click.option("--write-cache", type=CACHE, default=None)
@click.option(
    "--cache-limit-mb",
    type=click.IntRange(min=0),
    default=None,
    help="Write-cache size limit in MiB (0: no limit).",
)
@click.option("--description", default=None)
@click.option(
    "--max-versions",
    type=int,
    default=None,
    help="Merge the chain by itself after a promote once it is longer (2-1000).",
)
@click.option(
    "--subnet-affinity",
    type=AFFINITY,
    default=None,
    help="Placement: any server (none), a server on the device's subnet first "
    "(best-effort) or only (fixed). Give it alone.",
)
@click.option(
    "--require-tls/--no-require-tls",
    default=None,
    help="Serve this vDisk over NBD only to clients that started TLS "
    "(needs the servers' --tls optional or require).",
)
@click.option(
    "--store",
    default=None,
    help="Move it to this store set (its servers get a copy by themselves).",
)
@json_option
def set_cmd(
    name: str,
    mode: str | None,
    write_cache: str | None,
    cache_limit_mb: int | None,
    description: str | None,
    max_versions: int | None,
    subnet_affinity: str | None,
    require_tls: bool | None,
    store: str | None,
) -> None:
    """Change the mode, write cache, description, max-versions, require-TLS,
    store set or subnet affinity of vDisk NAME."""
    if subnet_affinity is not None:
        others = [
            flag
            for flag, value in (
                ("--mode", mode),
                ("--write-cache", write_cache),
                ("--cache-limit-mb", cache_limit_mb),
                ("--description", description),
                ("--max-versions", max_versions),
                ("--require-tls/--no-require-tls", require_tls),
                ("--store", store),
            )
            if value is not None
        ]
        if others:
            raise click.UsageError(f"give --subnet-affinity alone (not with {', '.join(others)})")
        info = open_farm().set_subnet_affinity(name, subnet_affinity)
        emit(
            info,
            lambda: click.echo(f"updated vDisk {info.name}: subnet affinity {subnet_affinity}"),
        )
        return
    limit = UNCHANGED if cache_limit_mb is None else (cache_limit_mb or None)
    info = open_farm().vdisks.set(
        name,
        mode=mode,
        write_cache=write_cache,
        cache_limit_mb=limit,
        description=description,
        max_versions=max_versions,
        require_tls=require_tls,
        store=store,
    )
    emit(info, lambda: click.echo(f"updated vDisk {info.name}"))


@vdisk.command("delete")
@click.argument("name")
@json_option
def delete_cmd(name: str) -> None:
    """Delete vDisk NAME (refused while devices use it or it is locked)."""
    info = open_farm().vdisks.delete(name)
    emit(info, lambda: click.echo(f"deleted vDisk {info.name}"))


@vdisk.command("verify")
@click.argument("name")
@json_option
def verify_cmd(name: str) -> None:
    """Check vDisk NAME's files in this store (sizes and sha256)."""
    farm = open_farm()
    with shown(f"verify {name}", local=isinstance(farm, LocalFarm)) as progress:
        result = farm.vdisks.verify(name, progress=progress)
    if not result.ok:
        raise Invalid(f"vDisk {name} failed verification: {'; '.join(result.problems)}")
    emit({"vdisk": name, "ok": True, "problems": []}, lambda: click.echo(f"vDisk {name} is intact"))


@vdisk.command("repair")
@click.argument("name")
@json_option
def repair_cmd(name: str) -> None:
    """Complete or roll back a merge or promote of vDisk NAME that a crash or
    a database failure cut short (run it on the server whose store it
    changed); re-hash its private copy if its device wrote it."""
    result = open_farm().repairs.repair(name)

    def text() -> None:
        step = (
            f"the half-done {result.step} was {result.outcome}" if result.step else result.outcome
        )
        click.echo(f"vDisk {name}: {step}")
        for note in result.notes:
            click.echo(note)

    emit(result, text)


@vdisk.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True, help="Image format of OUT."
)
@click.option(
    "--version",
    "number",
    type=click.IntRange(min=0),
    default=None,
    help="Version to export (default: what production devices boot).",
)
@json_option
def export_cmd(name: str, out: Path, fmt: str, number: int | None) -> None:
    """Write a version of vDisk NAME, flattened, as a new image file OUT
    (with --farm: a new file, 0600, in the server's transfer directory)."""
    farm = open_farm()
    with shown(f"export {name}", local=isinstance(farm, LocalFarm)) as progress:
        result = farm.versions.export(name, out, fmt, number, progress=progress)
    emit(
        result,
        lambda: click.echo(
            f"exported version {result.version} of vDisk {name} to {result.path} "
            f"({result.format}, {fmt_size(result.size)})"
        ),
    )


@vdisk.command("boot")
@click.argument("name")
@click.option("--kernel", metavar="FILE", default=None, help="The kernel it boots.")
@click.option("--initrd", metavar="FILE", default=None, help="The initramfs it boots.")
@click.option(
    "--cmdline",
    default=None,
    help="The kernel command line (printable ASCII, at most 1024 characters); "
    "unchanged when not given.",
)
@click.option("--clear", is_flag=True, help="Remove the newest version's boot files.")
@json_option
def boot_cmd(
    name: str, kernel: str | None, initrd: str | None, cmdline: str | None, clear: bool
) -> None:
    """Give the newest version of vDisk NAME the kernel and initramfs it
    boots over the network, and their command line; each one given
    replaces that one. The files are copied into the store (with --farm:
    files in the server's transfer directory), copied to every server with
    the version, and kept by the versions opened on it. --clear removes them."""
    info = open_farm().boot.attach(name, kernel=kernel, initrd=initrd, cmdline=cmdline, clear=clear)
    emit(info, lambda: click.echo(boot_line(info)))
