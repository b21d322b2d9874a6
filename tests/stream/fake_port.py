"""An in-memory farm behind the stream's port, for fast stream tests.

Rules: implements every call of vdfarm.stream.port.FarmPort with dicts, no
database and no threads of its own; raises the port's error types as the
real adapter would. Switches a test flips: `available` (False: every call
raises FarmUnavailable, the database is away), `refuse_renewals` (renewals
answer False: the lock was taken over), `not_here` (devices whose copy this
store does not hold as sealed: resolve raises NotInStore). It records what the stream told
it (`records`, `cancelled`, `released`, `reconciled`, `calls`) so a test
can check it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vdfarm.stream.port import (
    ExportTarget,
    FarmPort,
    FarmUnavailable,
    LiveSession,
    LockConflict,
    LockGrant,
    MoveOrder,
    NotInStore,
    UnknownExport,
    VdiskView,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def target(
    device_id: int,
    name: str,
    path: Path,
    *,
    mode: str = "standard",
    vdisk_id: int = 1,
    vdisk: str = "golden",
    limit: int | None = None,
    require_tls: bool = False,
    sha256: str | None = None,
    cache: str = "server-disk",
) -> ExportTarget:
    """A device's export over the one raw file PATH (a chain of one)."""
    return ExportTarget(
        device_id=device_id,
        device_name=name,
        vdisk_id=vdisk_id,
        vdisk_name=vdisk,
        access_mode=mode,
        version=0,
        chain=(path,),
        chain_formats=("raw",),
        size=path.stat().st_size,
        write_cache_type=cache,
        write_cache_limit_bytes=limit,
        writes_vdisk=mode == "private",
        require_tls=require_tls,
        sha256=sha256,
    )


class FakeFarm:
    """A farm of a few devices, in memory (see the module rules)."""

    def __init__(self, *targets: ExportTarget) -> None:
        self.targets = {t.device_name: t for t in targets}
        self.available = True
        self.refuse_renewals = False
        self.not_here: set[str] = set()  # device names whose copy is not in the store
        self.clock = NOW
        self.locks: dict[int, tuple[int, int]] = {}  # vdisk id -> (device id, token)
        self.tokens = 0
        self.records: dict[int, LiveSession] = {}  # device id -> its session record
        self.orders: dict[int, MoveOrder] = {}
        self.cancelled: list[int] = []
        self.released: list[tuple[int, int]] = []  # (vdisk id, token)
        self.reconciled: list[dict[int, LiveSession]] = []
        self.cache_usage: dict[int, int] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _call(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)
        if not self.available:
            raise FarmUnavailable("farm database error: connection refused")

    def order_move(self, device: str, to_server: str, age_seconds: float = 0) -> None:
        """An admin's (or the auto rebalance's) move order for DEVICE."""
        t = self.targets[device]
        at = self.clock - timedelta(seconds=age_seconds)
        self.orders[t.device_id] = MoveOrder(t.device_id, device, to_server, at)

    # -- the port ------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock

    def resolve_export(self, name_or_mac: str) -> ExportTarget:
        self._call("resolve_export")
        found = self.targets.get(name_or_mac)
        if found is None:
            raise UnknownExport(f"no device named {name_or_mac}")
        if name_or_mac in self.not_here:
            raise NotInStore(
                f"version {found.version} of vDisk {found.vdisk_name} is not in this server's store"
            )
        return found

    def resolve_vdisk_view(self, vdisk_name: str) -> VdiskView:
        self._call("resolve_vdisk_view")
        for t in self.targets.values():
            if t.vdisk_name == vdisk_name:
                return VdiskView(
                    t.vdisk_id, t.vdisk_name, t.access_mode, t.version, t.chain,
                    t.chain_formats, t.size, t.require_tls, t.sha256,
                )  # fmt: skip
        raise UnknownExport(f"no vDisk named {vdisk_name}")

    def list_exports(self) -> list[tuple[str, str]]:
        self._call("list_exports")
        return [
            (n, f"vDisk {t.vdisk_name} ({t.access_mode})") for n, t in sorted(self.targets.items())
        ]

    def acquire_lock(self, vdisk_id: int, device_id: int, lease_seconds: float) -> LockGrant:
        self._call("acquire_lock")
        holder = self.locks.get(vdisk_id)
        if holder is not None and holder[0] != device_id:
            raise LockConflict(f"vDisk {vdisk_id} is locked by device {holder[0]}")
        self.tokens += 1
        self.locks[vdisk_id] = (device_id, self.tokens)
        return LockGrant(self.tokens, self.clock + timedelta(seconds=lease_seconds))

    def renew_lock(self, vdisk_id: int, device_id: int, token: int, lease_seconds: float) -> bool:
        self._call("renew_lock")
        return not self.refuse_renewals and self.locks.get(vdisk_id) == (device_id, token)

    def release_lock(self, vdisk_id: int, device_id: int, token: int) -> None:
        self._call("release_lock")
        self.released.append((vdisk_id, token))
        if self.locks.get(vdisk_id) == (device_id, token):
            del self.locks[vdisk_id]

    def session_started(
        self, device_id: int, vdisk_id: int, version: int, client_ip: str | None
    ) -> None:
        self._call("session_started")
        self.records[device_id] = LiveSession(vdisk_id, version, client_ip)
        self.orders.pop(device_id, None)

    def session_ended(self, device_id: int) -> None:
        self._call("session_ended")
        self.records.pop(device_id, None)
        self.orders.pop(device_id, None)

    def cache_full(self, device_id: int, used_bytes: int, limit_bytes: int | None) -> None:
        self._call("cache_full")

    def report_cache_usage(self, used: Mapping[int, int]) -> None:
        self._call("report_cache_usage")
        self.cache_usage.update(used)

    def reconcile_sessions(self, live: Mapping[int, LiveSession]) -> tuple[int, int]:
        self._call("reconcile_sessions")
        added = len(set(live) - set(self.records))
        removed = len(set(self.records) - set(live))
        self.records = dict(live)
        self.reconciled.append(dict(live))
        return added, removed

    def pending_moves(self) -> list[MoveOrder]:
        self._call("pending_moves")
        return sorted(self.orders.values(), key=lambda o: o.device_name)

    def cancel_move(self, device_id: int) -> bool:
        self._call("cancel_move")
        self.cancelled.append(device_id)
        return self.orders.pop(device_id, None) is not None


def _is_a_port(farm: FakeFarm) -> FarmPort:
    return farm  # mypy checks the fake against the Protocol here
