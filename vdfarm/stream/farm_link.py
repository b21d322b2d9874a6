"""The stream server's periodic link to the farm database: heartbeats.

Rules: a heartbeat every `interval` seconds marks this server alive (other
servers and every console compute up/down from it); the store inventory
(which verified versions this server holds) rides on every
`inventory_every`-th beat, since it reads manifests. A database outage
never stops streaming: the beat is logged once and tried again.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("vdfarm.stream")


async def heartbeat_forever(farm, run_db, interval: float = 1.0,
                            inventory_every: int = 10) -> None:
    """Beat until cancelled. `run_db(fn, *args)` runs a blocking farm call
    off the event loop."""
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
        beat += 1
        await asyncio.sleep(interval)
