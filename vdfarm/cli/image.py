"""`vdfarm image sample`: build the small bootable sample image, or (with
--netboot DIR) the network-bootable sample.

Rules: needs no data directory; builds on this host, so it refuses --farm;
the builders are imported lazily and their failures become one error line.
"""

from __future__ import annotations

from pathlib import Path

import click

from vdfarm.cli.common import emit, json_option, refuse_remote


@click.group()
def image() -> None:
    """Build disk images."""


@image.command("sample")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--size-mib", type=int, default=64, show_default=True)
@click.option(
    "--netboot",
    "netboot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Build the network-bootable sample in this directory instead: an ext4 "
    "root (root.ext4), the kernel (vmlinuz) and an initramfs that attaches the "
    "root over NBD (initrd.gz).",
)
@json_option
def sample_cmd(out: Path | None, size_mib: int, netboot_dir: Path | None) -> None:
    """Build a small bootable Linux image (raw) at OUT, or with --netboot DIR
    the network-bootable sample: import DIR/root.ext4 as a vDisk and give it
    DIR/vmlinuz and DIR/initrd.gz as boot files (vdfarm vdisk boot)."""
    refuse_remote("image sample")
    if (out is None) == (netboot_dir is None):
        raise click.UsageError("give OUT (a disk image) or --netboot DIR: one of the two")
    from vdfarm.image.errors import ImageBuildError

    try:
        if netboot_dir is not None:
            _netboot(netboot_dir, size_mib)
            return
        from vdfarm.image.sample import build

        path = build(out or Path(), size_mib)
    except (ImageBuildError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    emit(
        {"path": str(path), "size_mib": size_mib},
        lambda: click.echo(f"built sample image {path} ({size_mib} MiB)"),
    )


def _netboot(directory: Path, size_mib: int) -> None:
    """Build the network-bootable sample in DIRECTORY and say how to use it.

    Raises ImageBuildError, ValueError.
    """
    from vdfarm.image import netboot

    built = netboot.build(directory, size_mib)

    def human() -> None:
        click.echo(
            f"built the network-bootable sample in {directory}: {built.root.name} "
            f"({size_mib} MiB ext4), {built.kernel.name}, {built.initrd.name}"
        )
        click.echo(
            f"use it: vdfarm vdisk import NAME {built.root} && vdfarm vdisk boot NAME "
            f"--kernel {built.kernel} --initrd {built.initrd} --cmdline '{built.cmdline}'"
        )

    emit(built, human)
