"""How the CLI prints: JSON for scripts, rich tables and one-liners for people.

Rules: stdout carries results only; errors go to stderr as ONE line
`vdfarm: error: <message>` (vdfarm.cli.oneline). JSON output is the
service records made plain (`to_plain`), key-sorted, one document per
command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from vdfarm.service.records import to_plain

PIPE_WIDTH = 200


def console() -> Console:
    """A console on the current stdout (wide when stdout is not a terminal)."""
    probe = Console(file=sys.stdout, highlight=False)
    if probe.is_terminal:
        return probe
    return Console(file=sys.stdout, highlight=False, width=PIPE_WIDTH)


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_plain(value), indent=2, sort_keys=True))


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return fmt_time(value)
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> None:
    """A table of ROWS under COLUMNS, or the line EMPTY if there are none."""
    rows = list(rows)
    if not rows:
        click.echo(empty)
        return
    table = Table(*columns, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console().print(table)


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """A two-column 'field  value' view of one record."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs:
        table.add_row(key, fmt(value))
    console().print(table)
