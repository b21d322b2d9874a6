"""The stream server's side of rebalance: carry out the move orders given to
devices connected here.

Rules:
- Every `interval` seconds the server asks the farm (through the port) for
  its pending move orders. A device streaming here is asked to reconnect
  (`SessionRegistry.move_out`); a device that would lose state by moving
  (pinned: it writes its vDisk, or data in its write cache here) keeps its
  session and the order is cancelled, with a log line. An order for a
  device with no session here is dropped (with its record) once it is
  `stale_after` seconds old: the device went away instead of moving.
- A database outage is logged once per outage and never stops streaming.
- The automatic rebalance that gives the orders is the farm's business
  (the daemon runs it), not the stream's.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from vdfarm.stream.port import MoveOrder
from vdfarm.stream.sessions import SessionRegistry

log = logging.getLogger("vdfarm.stream")

STALE_ORDER_SECONDS = 30.0
MOVES_INTERVAL = 1.0


def order_is_stale(order: MoveOrder, now: datetime, stale_after: float) -> bool:
    """True if ORDER (for a device with no session here) is old enough to drop."""
    return order.requested_at is None or now - order.requested_at > timedelta(seconds=stale_after)


async def carry_out_moves(
    registry: SessionRegistry, stale_after: float = STALE_ORDER_SECONDS
) -> int:
    """One pass over this server's move orders; returns how many devices were
    asked to move. Raises the port's errors (FarmUnavailable: database away)."""
    farm = registry.farm
    orders = await registry.run_db(farm.pending_moves)
    moved = 0
    for order in orders:
        if order.device_id in registry.sessions:
            why = registry.move_out(order.device_id, order.to_server)
            if why is None:
                moved += 1
                continue
            log.warning(
                "device %s stays on this server (not moved to %s): %s",
                order.device_name,
                order.to_server,
                why,
            )
            await registry.run_db(farm.cancel_move, order.device_id)
        elif order_is_stale(order, farm.now(), stale_after):
            log.info(
                "device %s never reached server %s: its move order is dropped",
                order.device_name,
                order.to_server,
            )
            await registry.run_db(farm.session_ended, order.device_id)
    return moved


async def moves_forever(registry: SessionRegistry, interval: float = MOVES_INTERVAL) -> None:
    """Carry out move orders until cancelled. Raises nothing but
    CancelledError (port errors are logged, once per outage)."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await carry_out_moves(registry)
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("cannot read move orders (streaming goes on): %s", exc)
            failing = True
