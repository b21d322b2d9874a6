"""Click parameter types for values the farm checks the same way everywhere:
copy windows, rates, server lists.

Rules: a type only checks (with `vdfarm.farm.windows`) and hands the text
on as given; the service parses it again, so a local and a remote farm see
the same input. A refusal is click's usage error: one line, exit 2.
"""

from __future__ import annotations

from typing import Any

import click

from vdfarm.farm.windows import RATE_HELP, parse_rate, parse_windows


class WindowText(click.ParamType):
    """A copy window HH:MM-HH:MM (several: comma-separated, or the option again)."""

    name = "HH:MM-HH:MM"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            parse_windows([str(value)])
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


class RateText(click.ParamType):
    """A copy cap in bytes per second (50MB/s, 1.5GB/s, 100M; none: no cap)."""

    name = "RATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            parse_rate(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


class NameList(click.ParamType):
    """Names separated by commas (s1,s2), as a tuple."""

    name = "NAME[,NAME...]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        names = tuple(part.strip() for part in str(value).split(",") if part.strip())
        if not names:
            self.fail("give one or more names separated by commas", param, ctx)
        return names


RATE_OPTION_HELP = f"Copy cap: {RATE_HELP}."
WINDOW_OPTION_HELP = (
    "Copy only within HH:MM-HH:MM, each server's local time (22:00-06:00 wraps "
    "midnight); give it again for several windows."
)
