"""The stream's tasks in the server process: the NBD listener, the device
sessions, the worker threads, move orders, write-cache reports and the
repair of session records after an outage.

Rules: each task is a thin wrapper that names a part of the stream server
(vdfarm.stream.server.StreamServer) and says when it starts and stops; the
work itself is the stream's. Each factory takes the ServerParts and returns
the task (or None when the options switch it off).
"""

from __future__ import annotations

import logging

from vdfarm.daemon.parts import ServerParts
from vdfarm.daemon.supervisor import EXECUTORS, SESSIONS, STOP_ACCEPTING, Task
from vdfarm.stream.farm_link import reconcile_after_outage_forever, report_cache_usage_forever
from vdfarm.stream.moves import moves_forever
from vdfarm.stream.server import StreamServer

log = logging.getLogger("vdfarm.daemon")


class Executors(Task):
    """The database, liveness and I/O threads: stopped last, after their
    work is done."""

    name = "executors"
    stop_phase = EXECUTORS

    def __init__(self, stream: StreamServer) -> None:
        self.stream = stream

    async def stop(self) -> None:
        self.stream.shutdown_executors()


class Sessions(Task):
    """Device sessions: on stop, every connection is closed and every
    session ended (private vDisks flushed, locks released)."""

    name = "sessions"
    stop_phase = SESSIONS

    def __init__(self, stream: StreamServer) -> None:
        self.stream = stream

    async def stop(self) -> None:
        await self.stream.end_sessions()


class NbdListener(Task):
    """The NBD listening socket. Start raises OSError (cannot bind)."""

    name = "nbd-listener"
    stop_phase = STOP_ACCEPTING

    def __init__(self, parts: ServerParts) -> None:
        self.parts = parts

    async def start(self) -> None:
        options = self.parts.options
        self.parts.nbd_port = await self.parts.stream.start(options.host, options.nbd_port)
        log.info("serving NBD on %s:%d", options.host, self.parts.nbd_port)

    async def stop(self) -> None:
        await self.parts.stream.stop_accepting()


class MoveOrders(Task):
    """Carries out the move orders for devices connected here."""

    name = "move-orders"

    def __init__(self, stream: StreamServer) -> None:
        self.stream = stream

    async def run(self) -> None:
        await moves_forever(self.stream.registry)


class CacheUsage(Task):
    """Reports the write-cache usage of connected devices to the farm."""

    name = "cache-usage"

    def __init__(self, stream: StreamServer) -> None:
        self.stream = stream

    async def run(self) -> None:
        await report_cache_usage_forever(self.stream.registry)


class ReconcileAfterOutage(Task):
    """Repairs the session records a database outage cost."""

    name = "reconcile"

    def __init__(self, stream: StreamServer) -> None:
        self.stream = stream

    async def run(self) -> None:
        await reconcile_after_outage_forever(self.stream.registry)


def executors(parts: ServerParts) -> Task:
    return Executors(parts.stream)


def sessions(parts: ServerParts) -> Task:
    return Sessions(parts.stream)


def nbd_listener(parts: ServerParts) -> Task:
    return NbdListener(parts)


def move_orders(parts: ServerParts) -> Task:
    return MoveOrders(parts.stream)


def cache_usage(parts: ServerParts) -> Task:
    return CacheUsage(parts.stream)


def reconcile(parts: ServerParts) -> Task:
    return ReconcileAfterOutage(parts.stream)
