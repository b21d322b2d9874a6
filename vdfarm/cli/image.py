"""`vdfarm image sample OUT`: build the small bootable sample image.

Rules: needs no data directory; builds on this host, so it refuses --farm;
the builder is imported lazily and its failures become one error line.
"""

from __future__ import annotations

from pathlib import Path

import click

from vdfarm.cli.common import emit, json_option, refuse_remote


@click.group()
def image() -> None:
    """Build disk images."""


@image.command("sample")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size-mib", type=int, default=64, show_default=True)
@json_option
def sample_cmd(out: Path, size_mib: int) -> None:
    """Build a small bootable Linux image (raw) at OUT."""
    refuse_remote("image sample")
    from vdfarm.image.errors import ImageBuildError
    from vdfarm.image.sample import build

    try:
        path = build(out, size_mib)
    except (ImageBuildError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    emit(
        {"path": str(path), "size_mib": size_mib},
        lambda: click.echo(f"built sample image {path} ({size_mib} MiB)"),
    )
