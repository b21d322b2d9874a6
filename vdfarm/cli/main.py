"""The `vdfarm` console entry point: `vdfarm agent …` on a lean path, every
other verb through the full command tree (vdfarm.cli.root).

Job: the agent runs on devices, where it must start fast and small: a
command line starting with `agent` runs the agent's command group alone,
which loads click and the agent (vdfarm.agent: nbd, block, the standard
library), not the database, the REST API or the service layer the full
tree imports. Anything else — global options first, `--help`, every other
verb — goes to the full tree, which lists `agent` among its verbs.
Rules: this module imports only the standard library at import time (the
console script and `python -m vdfarm` import it); errors are one line, as
in the full tree (vdfarm.cli.oneline).
"""

from __future__ import annotations

import sys

PROG = "vdfarm"
LEAN_VERB = "agent"


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    if args[:1] == [LEAN_VERB]:
        from vdfarm.cli.agent import agent
        from vdfarm.cli.oneline import run_with_one_line_errors

        run_with_one_line_errors(
            lambda: agent.main(args[1:], f"{PROG} {LEAN_VERB}", standalone_mode=False)
        )
    from vdfarm.cli.root import cli

    cli.main(prog_name=PROG)


if __name__ == "__main__":  # pragma: no cover
    main()
