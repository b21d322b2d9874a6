"""The farm's tasks in the server process: the local store, the REST API,
the heartbeat (with this server's registration) and the automatic rebalance.

Rules:
- The store task's start removes what a crashed import, delete or merge
  left in the store (`Store.remove_leftovers`, which skips anything a live
  process is still building), then completes or rolls back every half-done
  merge or seal and re-hashes private copies their device wrote
  (`RepairService.resume_all`), on a worker thread, and ends the sessions
  this server recorded before it last stopped (none of them is connected
  any more). It runs before the NBD listener opens, so a device that
  connects at once keeps the session it records. A database away at start
  is logged, not fatal (the stream reconciles its records when it is back).
- The heartbeat task's start registers the server: its advertised address, the ports the listeners bound and whether
  its REST API speaks HTTPS. Its life is one beat a second (the store
  inventory rides on one beat every `--inventory-interval` seconds);
  after each, the stream learns whether the database answered
  (`SessionRegistry.set_farm_reachable`). A database outage never stops
  streaming: it is logged once and tried again.
- Liveness calls (beats) run on the stream's liveness thread, other farm
  calls on its database thread, never on the event loop.
- The automatic rebalance runs every `auto_rebalance_every` seconds when
  asked for; the service makes sure one server of the farm runs it at a time.
"""

from __future__ import annotations

import asyncio
import logging

from vdfarm.api.server import ApiServer
from vdfarm.daemon.parts import ServerParts, advertised_address
from vdfarm.daemon.supervisor import API, Task
from vdfarm.service.errors import ServiceError

log = logging.getLogger("vdfarm.daemon")

HEARTBEAT_INTERVAL = 1.0
AUDIT_PRUNE_EVERY = 3600.0  # seconds


class LocalStore(Task):
    """This server's store. Start raises StoreError (the store cannot be
    listed)."""

    name = "store"

    def __init__(self, parts: ServerParts) -> None:
        self.parts = parts

    async def start(self) -> None:
        farm = self.parts.farm
        await asyncio.to_thread(farm.store.remove_leftovers)
        try:  # half-done merges and seals, private copies to re-hash
            await asyncio.to_thread(farm.repairs.resume_all)
        except ServiceError as exc:  # database away: the next start (or `vdisk repair`) does it
            log.warning("could not resume half-done store work: %s", exc)
        try:  # before the listener: a device connecting at once keeps its record
            await asyncio.to_thread(farm.sessions.end_all)
        except ServiceError as exc:
            self.parts.stream.registry.dirty = True
            log.warning("could not end the sessions of this server's last run: %s", exc)


class RestApi(Task):
    """The REST API (HTTPS when a certificate is given), served in this
    process's event loop. Start raises OSError (cannot bind), RuntimeError
    (uvicorn stopped at start), TokenFileError (unusable api-token file),
    ApiTlsError (unusable certificate or key)."""

    name = "api"
    stop_phase = API

    def __init__(self, parts: ServerParts) -> None:
        self.parts = parts
        self.api: ApiServer | None = None

    async def start(self) -> None:
        parts = self.parts
        options = parts.options
        self.api = ApiServer(
            parts.farm,
            parts.api_host,
            options.api_port or 0,
            tls_cert=options.api_tls_cert,
            tls_key=options.api_tls_key,
            limits=options.api_limits,
            transfer_dir=options.transfer_dir,
        )
        parts.api_port = await self.api.start()

    async def run(self) -> None:
        if self.api is not None:
            await self.api.wait()

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()


class Heartbeat(Task):
    """This server's presence in the farm: registration, then a beat a second."""

    name = "heartbeat"

    def __init__(self, parts: ServerParts, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.parts = parts
        self.interval = interval

    async def start(self) -> None:
        parts, registry = self.parts, self.parts.stream.registry
        if parts.nbd_port is None:
            raise RuntimeError("the heartbeat starts after the NBD listener")
        advertise = advertised_address(parts.options.host, parts.options.advertise)
        api_tls = parts.api_port is not None and parts.options.api_tls_cert is not None
        await registry.run_db(
            parts.farm.servers.register, parts.nbd_port, parts.api_port, advertise, api_tls
        )

    async def run(self) -> None:
        farm, registry = self.parts.farm, self.parts.stream.registry
        inventory_every = max(1, round(self.parts.options.inventory_every / self.interval))
        beat = 0
        failing = False
        while True:
            try:
                await registry.run_link(farm.servers.heartbeat, beat % inventory_every == 0)
                if failing:
                    log.info("farm database reachable again: heartbeats resume")
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("heartbeat failed (streaming goes on): %s", exc)
                failing = True
            registry.set_farm_reachable(not failing)
            beat += 1
            await asyncio.sleep(self.interval)


class AuditRetention(Task):
    """Deletes audit rows past the farm's retention (`farm set --audit-days`),
    at start and every `every` seconds, in bounded batches."""

    name = "audit-retention"

    def __init__(self, parts: ServerParts, every: float = AUDIT_PRUNE_EVERY) -> None:
        self.parts = parts
        self.every = every

    async def run(self) -> None:
        farm, registry = self.parts.farm, self.parts.stream.registry
        while True:
            try:
                deleted = await registry.run_db(farm.audit.prune, farm.now())
            except Exception as exc:  # database away: try again next time
                log.warning("audit retention failed: %s", exc)
            else:
                if deleted:
                    log.info("audit retention deleted %d rows", deleted)
            await asyncio.sleep(self.every)


class AutoRebalance(Task):
    """The farm's automatic rebalance, every `every` seconds."""

    name = "auto-rebalance"

    def __init__(self, parts: ServerParts, every: float) -> None:
        self.parts = parts
        self.every = every

    async def run(self) -> None:
        farm, registry = self.parts.farm, self.parts.stream.registry
        while True:
            await asyncio.sleep(self.every)
            try:
                result = await registry.run_db(farm.moves.auto_rebalance)
            except Exception as exc:
                log.warning("automatic rebalance failed: %s", exc)
                continue
            if result is not None and result.moves:
                log.info("automatic rebalance ordered %d moves", len(result.moves))


def local_store(parts: ServerParts) -> Task:
    return LocalStore(parts)


def rest_api(parts: ServerParts) -> Task | None:
    return RestApi(parts) if parts.options.api_port is not None else None


def heartbeat(parts: ServerParts) -> Task:
    return Heartbeat(parts)


def audit_retention(parts: ServerParts) -> Task:
    return AuditRetention(parts)


def auto_rebalance(parts: ServerParts) -> Task | None:
    every = parts.options.auto_rebalance_every
    return AutoRebalance(parts, every) if every > 0 else None
