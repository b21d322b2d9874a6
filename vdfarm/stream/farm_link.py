"""The stream's periodic work with the farm: write-cache usage reports and
the repair of session records after a database outage.

Rules:
- Every `interval` seconds, the write-cache bytes of each connected
  standard-mode device are sent through the port (only what changed since
  the last report that got through), so `vdfarm device show` can say it
  from any host. A database outage never stops streaming: the report is
  logged and tried again next time, with everything still unreported.
- Session records skipped or failed while the database was away mark the
  registry dirty; a heartbeat that finds the database again
  (`SessionRegistry.set_farm_reachable(True)`) wakes the repair at once,
  right after the beat. A failed reconcile stays dirty and is tried again
  after the next beat.
- The daemon runs both loops as named tasks; neither ever stops streaming.
"""

from __future__ import annotations

import asyncio
import logging

from vdfarm.stream.sessions import SessionRegistry

log = logging.getLogger("vdfarm.stream")

CACHE_USAGE_INTERVAL = 2.0


def cache_usage(registry: SessionRegistry) -> dict[int, int]:
    """{device_id: write-cache bytes} of every session with a write cache."""
    return {
        s.target.device_id: s.overlay.used_bytes
        for s in registry.sessions.values()
        if s.overlay is not None
    }


async def report_cache_usage_forever(
    registry: SessionRegistry, interval: float = CACHE_USAGE_INTERVAL
) -> None:
    """Report write-cache usage every INTERVAL seconds until cancelled.
    Raises nothing but CancelledError (port errors are logged)."""
    reported: dict[int, int] = {}
    while True:
        await asyncio.sleep(interval)
        now = cache_usage(registry)
        changed = {d: used for d, used in now.items() if reported.get(d) != used}
        if not changed:
            continue
        try:
            await registry.run_db(registry.farm.report_cache_usage, changed)
        except Exception as exc:  # database away: try again next time
            log.warning("could not report write-cache usage: %s", exc)
            continue
        reported = dict(now)


async def reconcile_after_outage_forever(registry: SessionRegistry) -> None:
    """Whenever a heartbeat finds the database back while records are
    missing (`SessionRegistry.reconcile_wanted`), repair them at once
    (`SessionRegistry.reconcile`). Raises nothing but CancelledError."""
    while True:
        await registry.reconcile_wanted.wait()
        registry.reconcile_wanted.clear()
        if registry.dirty and registry.database_reachable:
            await registry.reconcile()
