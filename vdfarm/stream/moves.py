"""The stream server's side of rebalance: carry out the move orders given to
devices connected here, and run the farm's automatic rebalance.

Rules:
- Every `interval` seconds the server asks the farm for its pending move
  orders (`vdfarm.service.moves.pending_moves`). A device streaming here is
  asked to reconnect (`SessionRegistry.move_out`); a device that would lose
  state by moving (pinned: private, maintenance, or data in its write cache
  here) keeps its session and the order is cancelled, with a log line. An
  order for a device with no session here is dropped (with its record) once
  it is `stale_after` seconds old: the device went away instead of moving.
- The automatic rebalance (`vdfarm.service.moves.auto_rebalance`) runs every
  `auto_every` seconds when enabled; the service itself makes sure only one
  server of the farm runs it at a time.
- A database outage is logged once per outage and never stops streaming.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from vdfarm.service import moves

log = logging.getLogger("vdfarm.stream")

STALE_ORDER_SECONDS = 30.0


def order_is_stale(order: moves.MoveOrder, now, stale_after: float) -> bool:
    """True if ORDER (for a device with no session here) is old enough to drop."""
    return order.requested_at is None or now - order.requested_at > timedelta(seconds=stale_after)


async def carry_out_moves(farm, registry, stale_after: float = STALE_ORDER_SECONDS) -> int:
    """One pass over this server's move orders; returns how many devices were
    asked to move. Raises what the farm raises (database away)."""
    orders = await registry.run_db(moves.pending_moves, farm)
    moved = 0
    for order in orders:
        if order.device_id in registry.sessions:
            why = registry.move_out(order.device_id, order.to_server.name)
            if why is None:
                moved += 1
                continue
            log.warning(
                "device %s stays on this server (not moved to %s): %s",
                order.device_name,
                order.to_server.name,
                why,
            )
            await registry.run_db(moves.cancel_move, farm, order.device_id)
        elif order_is_stale(order, farm.now(), stale_after):
            log.info(
                "device %s never reached server %s: its move order is dropped",
                order.device_name,
                order.to_server.name,
            )
            await registry.run_db(farm.session_ended, order.device_id)
    return moved


async def moves_forever(farm, registry, interval: float = 1.0) -> None:
    """Carry out move orders until cancelled."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await carry_out_moves(farm, registry)
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("cannot read move orders (streaming goes on): %s", exc)
            failing = True


async def auto_rebalance_forever(farm, registry, every: float) -> None:
    """Run the farm's automatic rebalance every EVERY seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        try:
            result = await registry.run_db(moves.auto_rebalance, farm)
        except Exception as exc:
            log.warning("automatic rebalance failed: %s", exc)
            continue
        if result is not None and result.moves:
            log.info("automatic rebalance ordered %d moves", len(result.moves))
