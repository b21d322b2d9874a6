"""The stream server's periodic link to the farm database: heartbeats.

Rules: a heartbeat every `interval` seconds marks this server alive (other
servers and every console compute up/down from it); the store inventory
(which verified versions this server holds) rides on every
`inventory_every`-th beat, since it reads manifests. A database outage
never stops streaming: the beat is logged once and tried again. After each
beat, `after_beat(reached)` (if given) learns whether the database answered:
the stream server stops waiting on a database it knows is away, and repairs
its session records once it is back.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("vdfarm.stream")


async def heartbeat_forever(
    farm, run_db, interval: float = 1.0, inventory_every: int = 10, after_beat=None
) -> None:
    """Beat until cancelled. `run_db(fn, *args)` runs a blocking farm call
    off the event loop; `after_beat(reached)` is awaited after each beat."""
    beat = 0
    failing = False
    while True:
        try:
            await run_db(farm.servers.heartbeat, beat % inventory_every == 0)
            if failing:
                log.info("farm database reachable again: heartbeats resume")
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("heartbeat failed (streaming goes on): %s", exc)
            failing = True
        if after_beat is not None:
            await after_beat(not failing)
        beat += 1
        await asyncio.sleep(interval)
