"""The replication task: this server's store follows the database by itself.

Rules:
- Every round (a second, or at once when the farm tells of a change:
  `farm.changes`, PostgreSQL only) it asks the database what this
  server's stores must hold (`ReplicationService.work_for`), looks at the store
  (`store.snapshot`) and acts on the pure plan (`replication.planner`):
  adopt complete chains into the manifest, remove partial copies nobody
  wants, remove vDisks the database forgot (once they stayed orphans for
  `ORPHAN_GRACE` seconds: an import publishes its directory a moment
  before its row), delete retired files no session reads, and start the
  next copy. A seal or merge made here writes the manifest before the
  database, so an adopt (and a fetched file's adopt) happens only if the
  database, read again, still has that chain, and only onto the manifest
  the plan saw (`ManifestChanged` otherwise: the next round decides).
- A fetched boot file is listed in the manifest at once (its vDisk's chain
  is here already: boot files come after it).
- One copy at a time, on a thread of the task's own (at the copies' lower
  CPU priority, `copy_priority`: the devices' I/O comes first), while the
  rounds go on. A copy
  runs only inside its store's windows (in this server's local time,
  `local_clock`) unless `replication start --now` asked for its version;
  outside them it pauses between chunks and waits, its partial file kept.
  The store's cap, or this server's own if lower (`--max-replication-rate`),
  is one token bucket for the server's copies.
- Everything it does about a version it lacks is written in `replicas`
  (queued and why, copying with bytes and rate, failed and why); once the
  inventory lists the version, the row goes.
- Peers are called with a `replica` token this server makes for itself
  before its first copy (kept in memory only; its older ones are revoked),
  so a server that never copies makes none.
- A change of the store's manifests (an import, a seal, a merge made
  here, or a copy adopted) updates the inventory in the same round, so
  peers learn within a second that this server holds a version.
- Every `PURGE_EVERY` rounds the chunk lists of the store's sealed files
  are computed where missing (cached beside each file, on a lowered thread
  of the task's own), so a peer asking for one does not wait for a hash of
  the whole file.
- Drift: every `rehash_every` seconds (the first one that long after the
  last one ended, across restarts: `rehash_clock`) each sealed file of
  the store is re-hashed; one that differs from its manifest is moved to
  quarantine and reported `mismatch`, then fetched again like any missing
  file (unless its manifest entry changed while it was hashed: a version
  reopened or sealed again here). Names and sizes are checked by the inventory every
  `inventory_every` seconds: a file whose size changed is quarantined too.
- Each round also applies the promotions that waited for replication
  (`promote --when-replicated`) whose version is now everywhere; the
  service makes that safe when every server does it.
- A database away or a store error is logged once, then tried again; it
  never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from vdfarm.daemon.parts import ServerParts
from vdfarm.daemon.rehash_clock import first_rehash_in, read_last_rehash, write_last_rehash
from vdfarm.daemon.supervisor import Task
from vdfarm.farm.changes import listener_for
from vdfarm.farm.windows import is_open, lowest_cap
from vdfarm.replication import planner
from vdfarm.replication.drift import find_drift
from vdfarm.replication.fetch import (
    FetchOutcome,
    FileWant,
    Paused,
    PeerAddress,
    Progress,
    fetch_file,
)
from vdfarm.replication.throttle import Throttle
from vdfarm.replication.verify import quarantine_drifted
from vdfarm.service.replication import Peer, ReplicationWork, WantedFile, WantedVdisk
from vdfarm.service.sessions import release_retired_files
from vdfarm.store.boot_files import list_boot_files
from vdfarm.store.chunks import chunk_list
from vdfarm.store.copy_priority import lower_this_thread
from vdfarm.store.errors import ManifestChanged, StoreError, StoreFull
from vdfarm.store.manifest import Manifest
from vdfarm.store.replica_files import adopt_chain
from vdfarm.store.snapshot import snapshot
from vdfarm.store.store import Store

log = logging.getLogger("vdfarm.replication")

ROUND_EVERY = 1.0
MIN_ROUND_GAP = 0.05  # seconds between two rounds, however many changes come
FULL_BACKOFF = 10.0  # seconds before a copy that found the disk full is tried again
FAILED_BACKOFF = 5.0  # seconds before a copy every peer failed is tried again
ORPHAN_GRACE = 10.0  # seconds a vDisk directory the database does not know is left alone
PURGE_EVERY = 10  # rounds
REPORT_EVERY = 1.0  # seconds between progress rows of a copy
TOKEN_PREFIX = "replica-"


def peer_url(peer: Peer) -> str:
    scheme = "https" if peer.api_tls else "http"
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"{scheme}://{host}:{peer.api_port}"


class Replication(Task):
    """Pulls what this server's stores lack; see the module's rules."""

    name = "replication"

    def __init__(
        self,
        parts: ServerParts,
        every: float = ROUND_EVERY,
        local_clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.parts = parts
        self.every = every
        self.local_clock = local_clock
        self.rehash_every = parts.options.rehash_every
        self.inventory_every = parts.options.inventory_every
        self.token: str | None = None
        self.throttle = Throttle(None)
        self.copying: asyncio.Task[None] | None = None
        self.copy_thread = ThreadPoolExecutor(
            1, thread_name_prefix="replica-copy", initializer=lower_this_thread
        )
        self.hash_thread = ThreadPoolExecutor(
            1, thread_name_prefix="replica-hash", initializer=lower_this_thread
        )
        self.warming: asyncio.Task[None] | None = None
        self.copy_key: tuple[int, int] | None = None
        self.stopping = threading.Event()
        self.wake = asyncio.Event()
        self.orphans_since: dict[str, float] = {}
        self.backoff_until: dict[tuple[int, int], float] = {}  # (vDisk id, version) -> monotonic
        self.latest: dict[int, WantedVdisk] = {}  # vDisk id -> this round's view (windows, cap)
        self.last_manifests: dict[str, Manifest | None] | None = None
        self.rounds = 0
        self.failing = False
        last = read_last_rehash(parts.farm.data_dir)
        self.next_rehash = time.monotonic() + first_rehash_in(last, time.time(), self.rehash_every)
        self.next_inventory = 0.0

    # -- the loop ----------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def changed() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to wake
                loop.call_soon_threadsafe(self.wake.set)

        listener = listener_for(self.parts.farm.db_url, changed)
        if listener is not None:
            listener.start()
        try:
            while True:
                try:
                    await self.round()
                    if self.failing:
                        log.info("replication: working again")
                    self.failing = False
                except Exception as exc:
                    if not self.failing:
                        log.warning("replication round failed (tried again): %s", exc)
                    self.failing = True
                self.rounds += 1
                await self._until_next_round()
        finally:
            if listener is not None:
                listener.stop()

    async def _until_next_round(self) -> None:
        """Wait `every` seconds, or less if the farm changed (at least
        MIN_ROUND_GAP: a burst of changes costs one round more, not many)."""
        await asyncio.sleep(MIN_ROUND_GAP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), self.every - MIN_ROUND_GAP)
        self.wake.clear()

    async def stop(self) -> None:
        self.stopping.set()
        for task in (self.copying, self.warming):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self.copy_thread.shutdown(wait=False)
        self.hash_thread.shutdown(wait=False)

    async def round(self) -> None:
        farm, registry = self.parts.farm, self.parts.stream.registry
        now = time.monotonic()
        changed = False
        work = await registry.run_db(farm.replication.work_for, farm.server_id, farm.now())
        self.latest = {w.vdisk_id: w for w in work.vdisks}
        if self.copying is not None and not self.copying.done() and self._copy_id in self.latest:
            self.throttle.set_rate(self._cap(self.latest[self._copy_id]))  # a cap set mid-copy
        if now >= self.next_rehash or now >= self.next_inventory:
            full = now >= self.next_rehash
            ids = {w.name: w.vdisk_id for w in work.vdisks}
            changed |= await self._check_drift(full, ids)
            self.next_inventory = now + self.inventory_every
            if full:
                self.next_rehash = now + self.rehash_every
                await asyncio.to_thread(write_last_rehash, farm.data_dir, time.time())
        snap = await asyncio.to_thread(snapshot, farm.store)
        if snap.manifests != self.last_manifests:  # an import, seal or merge here: tell peers now
            changed = True
            self.last_manifests = snap.manifests
        decided = planner.plan(work.vdisks, work.all_vdisk_names, snap.manifests, snap.partials)
        for adopt in await self._still_decided(decided.adopts, work):
            if self._copying_into(adopt.name):
                continue
            try:
                await asyncio.to_thread(
                    adopt_chain,
                    farm.store,
                    adopt.name,
                    list(adopt.files),
                    adopt.virtual_size,
                    farm.now(),
                    snap.manifests.get(adopt.name),
                    adopt.boot_files,
                )
            except ManifestChanged:
                continue  # a step here wrote it: the next round decides again
            log.info("replication: vDisk %s now holds %d file(s)", adopt.name, len(adopt.files))
            changed = True
        changed |= await self._remove_orphans(decided.orphans, now)
        for vdisk, partial in decided.remove_partials:
            if not self._copying_into(vdisk):
                (farm.store.root / vdisk / partial).unlink(missing_ok=True)
        if changed:
            await registry.run_db(farm.servers.record_inventory)
        await self._report_waiting(decided.waiting)
        await self._start_copy(decided.fetches)
        for promoted in await registry.run_db(farm.replication.apply_due_promotions, farm.now()):
            log.info("replication: %s", promoted)
        if self.rounds % PURGE_EVERY == 0 and (self.warming is None or self.warming.done()):
            self.warming = asyncio.create_task(self._warm_chunk_lists())
        if self.rounds % PURGE_EVERY == 0:
            for wanted in work.vdisks:
                await registry.run_db(
                    release_retired_files, farm.session, farm.store, wanted.vdisk_id
                )

    # -- steps -------------------------------------------------------------

    async def _still_decided(
        self, adopts: tuple[planner.Adopt, ...], work: ReplicationWork
    ) -> list[planner.Adopt]:
        """ADOPTS still decided by a second read of the database
        (`planner.still_decided`)."""
        if not adopts:
            return []
        farm = self.parts.farm
        again = await self.parts.stream.registry.run_db(
            farm.replication.work_for, farm.server_id, farm.now()
        )
        return planner.still_decided(adopts, work.vdisks, again.vdisks)

    def _make_token(self) -> str:
        """A new `replica` token for this server; its older ones revoked."""
        farm = self.parts.farm
        prefix = f"{TOKEN_PREFIX}{farm.server_name}-"
        for token in farm.tokens.list():
            if token.name.startswith(prefix) and token.revoked_at is None:
                farm.tokens.revoke(token.name, actor=f"server:{farm.server_name}")
        name = f"{prefix}{int(time.time() * 1000)}"
        made = farm.tokens.add(name, "replica", actor=f"server:{farm.server_name}")
        return made.secret

    def _cap(self, wanted: WantedVdisk) -> int | None:
        """The rate a copy of WANTED may use: the lower of its store's cap
        and this server's own (`--max-replication-rate`), None for none."""
        return lowest_cap(wanted.max_rate_bps, self.parts.options.replication_max_rate_bps)

    def _copying_into(self, vdisk: str) -> bool:
        return self.copying is not None and not self.copying.done() and self._copy_vdisk == vdisk

    _copy_vdisk: str | None = None
    _copy_id: int | None = None

    async def _remove_orphans(self, orphans: tuple[str, ...], now: float) -> bool:
        for name in list(self.orphans_since):
            if name not in orphans:
                del self.orphans_since[name]
        removed = False
        for name in orphans:
            since = self.orphans_since.setdefault(name, now)
            if now - since < ORPHAN_GRACE:
                continue
            store = self.parts.farm.store
            try:
                await asyncio.to_thread(store.delete, name)
            except Exception as exc:
                log.warning("replication: cannot remove vDisk %s: %s", name, exc)
                continue
            log.info("replication: removed vDisk %s (the farm deleted it)", name)
            del self.orphans_since[name]
            removed = True
        return removed

    async def _report_waiting(self, waiting: tuple[planner.Waiting, ...]) -> None:
        farm, registry = self.parts.farm, self.parts.stream.registry
        for item in waiting:
            await registry.run_db(
                farm.replication.report,
                farm.server_id,
                item.wanted.vdisk_id,
                item.file.version,
                item.file.file_name,
                "queued",
                item.why,
                0,
                item.file.size,
            )

    def _may_run(self, wanted: WantedVdisk, version: int) -> bool:
        """True while a copy of VERSION may go on: not stopping, and inside
        a window of its store as the last round saw it (or asked for now)."""
        if self.stopping.is_set():
            return False
        wanted = self.latest.get(wanted.vdisk_id, wanted)
        return version in wanted.now_versions or is_open(wanted.windows, self.local_clock().time())

    async def _start_copy(self, fetches: tuple[planner.Fetch, ...]) -> None:
        farm, registry = self.parts.farm, self.parts.stream.registry
        if self.copying is not None and not self.copying.done():
            return
        for fetch in fetches:
            version = fetch.file.version
            if self.backoff_until.get((fetch.wanted.vdisk_id, version), 0.0) > time.monotonic():
                continue
            if not self._may_run(fetch.wanted, version):
                await registry.run_db(
                    farm.replication.report,
                    farm.server_id,
                    fetch.wanted.vdisk_id,
                    version,
                    fetch.file.file_name,
                    "queued",
                    "window closed",
                    0,
                    fetch.file.size,
                )
                continue
            if self.token is None:
                self.token = await registry.run_db(self._make_token)
            self._copy_vdisk = fetch.wanted.name
            self._copy_id = fetch.wanted.vdisk_id
            self.copying = asyncio.create_task(self._copy(fetch))
            return

    async def _copy(self, fetch: planner.Fetch) -> None:
        farm, registry = self.parts.farm, self.parts.stream.registry
        wanted, file = fetch.wanted, fetch.file
        peers = [PeerAddress(p.name, peer_url(p)) for p in wanted.peers_of(file)]
        by_name = {p.name: p.server_id for p in wanted.peers_of(file)}
        want = FileWant(wanted.name, file.file_name, file.size, file.sha256)
        self.throttle.set_rate(self._cap(wanted))
        last = [0.0]
        loop = asyncio.get_running_loop()

        def report(state: str, reason: str, done: int, rate: float, peer: str | None) -> None:
            farm.replication.report(
                farm.server_id,
                wanted.vdisk_id,
                file.version,
                file.file_name,
                state,
                reason,
                done,
                file.size,
                rate,
                by_name.get(peer) if peer else None,
            )

        def progress(p: Progress) -> None:
            now = time.monotonic()
            if now - last[0] < REPORT_EVERY:
                return
            last[0] = now
            try:
                report("copying", "", p.bytes_done, p.rate_bps, p.peer)
            except Exception as exc:  # database away: the copy goes on
                log.debug("replication: progress not recorded: %s", exc)

        def copy() -> FetchOutcome:
            return fetch_file(
                want,
                farm.store.root / wanted.name,
                peers,
                self.token or "",
                throttle=self.throttle,
                may_run=lambda: self._may_run(wanted, file.version),
                progress=progress,
                ca_file=self.parts.options.peer_ca,
            )

        log.info(
            "replication: copying %s/%s (version %d) from %s",
            wanted.name,
            file.file_name,
            file.version,
            ", ".join(p.name for p in peers),
        )
        try:
            outcome = await loop.run_in_executor(self.copy_thread, copy)
        except Paused as paused:
            why = "server stopping" if self.stopping.is_set() else "window closed"
            await registry.run_db(report, "queued", why, paused.bytes_received, 0.0, paused.peer)
            return
        except StoreFull as exc:
            log.warning("replication: copy of %s/%s: %s", wanted.name, file.file_name, exc)
            self.backoff_until[(wanted.vdisk_id, file.version)] = time.monotonic() + FULL_BACKOFF
            await registry.run_db(report, "failed", f"disk full: {exc}", 0, 0.0, None)
            return
        except Exception as exc:
            log.warning("replication: copy of %s/%s failed: %s", wanted.name, file.file_name, exc)
            await registry.run_db(report, "failed", str(exc), 0, 0.0, None)
            return
        if outcome.published:
            log.info(
                "replication: %s/%s verified (%d bytes from %s)",
                wanted.name,
                file.file_name,
                outcome.bytes_received,
                outcome.peer,
            )
            if file.kind is not None:
                await asyncio.to_thread(
                    list_boot_files, farm.store, wanted.name, [planner.boot_entry(file)]
                )
                await registry.run_db(farm.servers.record_inventory)
            else:
                await self._adopt_up_to(wanted, file)
            await registry.run_db(
                farm.replication.clear, farm.server_id, wanted.vdisk_id, file.version
            )
        else:
            why = "; ".join(outcome.failures) or "no peer could send it"
            self.backoff_until[(wanted.vdisk_id, file.version)] = time.monotonic() + FAILED_BACKOFF
            log.warning("replication: copy of %s/%s failed: %s", wanted.name, file.file_name, why)
            await registry.run_db(report, "failed", why, 0, 0.0, None)

    async def _adopt_up_to(self, wanted: WantedVdisk, file: WantedFile) -> None:
        """Put FILE (just verified) in the manifest, with the chain below it,
        so the inventory and the next round see it."""
        farm = self.parts.farm
        again = await self.parts.stream.registry.run_db(
            farm.replication.work_for, farm.server_id, farm.now()
        )
        if not any(w.name == wanted.name and w.chain == wanted.chain for w in again.vdisks):
            log.info(
                "replication: the chain of %s changed during the copy of %s: decided again",
                wanted.name,
                file.file_name,
            )
            return
        entries = planner.chain_entries(wanted)
        upto = [e.name for e in entries].index(file.file_name) + 1
        await asyncio.to_thread(
            adopt_chain,
            farm.store,
            wanted.name,
            list(entries[:upto]),
            wanted.virtual_size,
            farm.now(),
        )
        await self.parts.stream.registry.run_db(farm.servers.record_inventory)

    async def _check_drift(self, full: bool, ids: dict[str, int]) -> bool:
        """Quarantine the store's files that changed behind vdfarm's back
        (sizes every time, hashes when FULL); True if any went."""
        farm, registry = self.parts.farm, self.parts.stream.registry
        drifted = await asyncio.to_thread(find_drift, farm.store, full, set(ids))
        if not drifted:
            return False
        gone = await asyncio.to_thread(
            quarantine_drifted, farm.store, drifted, farm.now(), self._copying_into
        )
        for item in gone:
            vdisk_id = ids.get(item.drift.vdisk)
            if item.drift.version is not None and vdisk_id is not None:
                await registry.run_db(
                    farm.replication.report,
                    farm.server_id,
                    vdisk_id,
                    item.drift.version,
                    item.drift.file_name,
                    "mismatch",
                    item.drift.why,
                )
        return bool(gone)

    async def _warm_chunk_lists(self) -> None:
        """Hash the store's sealed files into their chunk lists ahead of
        the first peer that asks (a cached list is read, not recomputed)."""
        store = self.parts.farm.store
        for directory, name in await asyncio.to_thread(sealed_files, store):
            if self.stopping.is_set():
                return
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.hash_thread, chunk_list, directory / name
                )
            except (OSError, StoreError) as exc:
                log.debug("replication: no chunk list for %s/%s: %s", directory.name, name, exc)


def sealed_files(store: Store) -> list[tuple[Path, str]]:
    """(vDisk directory, file name) of every sealed, verified file of STORE,
    and of every boot file."""
    try:
        manifests = store.scan()
    except StoreError:
        return []
    return [
        (store.root / m.vdisk, f.name)
        for m in manifests
        for f in m.files
        if f.sealed and not f.unverified
    ] + [(store.root / m.vdisk, b.name) for m in manifests for b in m.boot_files]


def replication(parts: ServerParts) -> Task | None:
    return Replication(parts) if parts.options.replication else None
