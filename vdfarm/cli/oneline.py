"""Expected failures of a command as one stderr line, never a traceback.

Job: run a click command in non-standalone mode and turn what it raises
into `vdfarm: error: <message>` with the exit code: the command's own
result (0 if none), 2 for a usage error, 1 for the EXPECTED exception
types (the service errors of the full tree), 1 for an abort; a bare
command group prints its help.
Rules: imports only click and the standard library (the agent's lean
entry uses it, vdfarm.cli.main).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

EXIT_SERVICE_ERROR = 1


def error_line(message: str) -> None:
    """Print `vdfarm: error: MESSAGE` as one line on stderr."""
    flat = " ".join(str(message).split())
    click.echo(f"vdfarm: error: {flat}", err=True)


def run_with_one_line_errors(
    invoke: Callable[[], Any], expected: tuple[type[Exception], ...] = ()
) -> NoReturn:
    """Call INVOKE (a click `main(..., standalone_mode=False)`) and exit.

    An EXPECTED exception prints its `message` attribute (else its text).
    """
    try:
        result = invoke()
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "")
        sys.exit(0)
    except click.ClickException as exc:
        error_line(exc.format_message())
        sys.exit(exc.exit_code)
    except click.Abort:
        error_line("aborted")
        sys.exit(EXIT_SERVICE_ERROR)
    except expected as exc:
        error_line(getattr(exc, "message", None) or str(exc))
        sys.exit(EXIT_SERVICE_ERROR)
    sys.exit(result if isinstance(result, int) else 0)
