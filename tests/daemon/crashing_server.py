"""A test-only server process: `vdfarm server run`'s daemon entry with one
extra task that dies, so a test can watch the whole process go down.

Usage: python -m tests.daemon.crashing_server DATA_DIR NBD_PORT
Exits with the status the daemon returns. Production never loads this file.
"""

from __future__ import annotations

import asyncio
import sys

from vdfarm.daemon.parts import ServerOptions, ServerParts
from vdfarm.daemon.run import run_server
from vdfarm.daemon.supervisor import Task
from vdfarm.service.context import Farm

CRASH_AFTER_S = 1.0


class Crasher(Task):
    """Runs a moment, then raises as a bug would."""

    name = "crasher"

    async def run(self) -> None:
        await asyncio.sleep(CRASH_AFTER_S)
        raise RuntimeError("the crasher broke, as asked")


def crasher(_parts: ServerParts) -> Task:
    return Crasher()


def main(data_dir: str, nbd_port: str) -> int:
    farm = Farm.open(data_dir)
    try:
        options = ServerOptions(nbd_port=int(nbd_port), api_port=0)
        return run_server(farm, options, extra_tasks=[crasher])
    finally:
        farm.close()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
