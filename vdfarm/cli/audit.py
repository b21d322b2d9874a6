"""`vdfarm audit list`: the trail of changes.

Rules: flags, help and output only; every decision is the service's.
`list` shows the newest DEFAULT_LIMIT entries unless given `--limit N` or
`--all` (through --farm the client pages the API for them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from vdfarm.cli.common import emit, json_option, open_farm
from vdfarm.cli.output import print_table

DEFAULT_LIMIT = 100


class IsoTime(click.ParamType):
    """An ISO 8601 time; without a zone it is taken as UTC."""

    name = "ISO-TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2024-01-31T12:00:00Z)", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _summary(before: Any, after: Any) -> str:
    if before is None or after is None:
        return ""
    changed = [k for k in sorted(after) if before.get(k) != after.get(k)]
    return ", ".join(f"{k}: {before.get(k)} → {after.get(k)}" for k in changed)


@click.group()
def audit() -> None:
    """Read the audit trail."""


@audit.command("list")
@click.option("--since", type=IsoTime(), default=None, help="Only changes at or after this time.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help=f"Only the newest N (default {DEFAULT_LIMIT}).",
)
@click.option("--all", "everything", is_flag=True, help="Every entry (no limit).")
@json_option
def list_cmd(since: datetime | None, limit: int | None, everything: bool) -> None:
    """List recorded changes, oldest first: the newest 100 unless --limit or --all."""
    if everything and limit is not None:
        raise click.UsageError("give --limit or --all, not both")
    if not everything and limit is None:
        limit = DEFAULT_LIMIT
    entries = open_farm().audit.list(since=since, limit=limit)
    emit(
        entries,
        lambda: print_table(
            ["AT", "ACTOR", "ACTION", "TARGET", "CHANGES"],
            [
                (
                    e.at,
                    e.actor,
                    e.action,
                    f"{e.target_type} {e.target_name}",
                    _summary(e.before, e.after),
                )
                for e in entries
            ],
            empty="no audit entries",
        ),
    )
