"""The stream's port (vdfarm.stream.port) implemented over the service layer.

Rules:
- One adapter, `ServiceFarmPort`, wraps a `vdfarm.service.Farm`: every port
  call is one service call; service records become the port's frozen
  dataclasses; service errors become the port's error types, message kept
  (`_translated`). Nothing else: no caching, no retries, no decisions —
  but one memo: the version a device's last resolution said it writes,
  handed to the lock's acquire so a version promoted in between is refused.
- It lives in the daemon because the service may not import the stream,
  and the stream may not import the service: the daemon is the one package
  that sees both. If the service moves an operation, only this file changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import datetime

from vdfarm.service import errors as service_errors
from vdfarm.service.context import Farm
from vdfarm.service.exports import ExportTarget as ServiceExportTarget
from vdfarm.service.sessions import LiveSession as ServiceLiveSession
from vdfarm.stream import port

# Service error kind -> the port's error type (the first match wins).
_ERRORS: tuple[tuple[type[service_errors.ServiceError], type[port.FarmError]], ...] = (
    (service_errors.NotFound, port.UnknownExport),
    (service_errors.Invalid, port.ExportRefused),
    (service_errors.Conflict, port.LockConflict),
    (service_errors.NotInStore, port.NotInStore),
    (service_errors.Unavailable, port.FarmUnavailable),
    (service_errors.NotInitialised, port.FarmUnavailable),
    (service_errors.ServiceError, port.FarmError),
)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Re-raise a service error as the port's error of the same kind, with
    the same one-line message (the NBD client sees that line)."""
    try:
        yield
    except service_errors.ServiceError as exc:
        kind = next(p for s, p in _ERRORS if isinstance(exc, s))
        raise kind(str(exc)) from exc


def export_target(target: ServiceExportTarget) -> port.ExportTarget:
    """The port's view of a service ExportTarget."""
    return port.ExportTarget(
        device_id=target.device_id,
        device_name=target.device_name,
        vdisk_id=target.vdisk_id,
        vdisk_name=target.vdisk_name,
        access_mode=target.access_mode,
        version=target.version,
        chain=tuple(target.chain),
        chain_formats=tuple(target.chain_formats),
        size=target.size,
        write_cache_type=target.write_cache_type,
        write_cache_limit_bytes=target.write_cache_limit_bytes,
        writes_vdisk=target.writes_vdisk,
        require_tls=target.require_tls,
        sha256=target.sha256,
    )


class ServiceFarmPort:
    """FarmPort over FARM (a vdfarm.service Farm). Every method raises only
    the port's errors (see vdfarm.stream.port.FarmPort)."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        # device id -> the version its last resolution said it writes: the
        # lock is granted only for that version (a promote in between
        # refuses it); the one thing this adapter remembers
        self._writes: dict[int, int] = {}

    def now(self) -> datetime:
        return self.farm.now()

    def resolve_export(self, name_or_mac: str) -> port.ExportTarget:
        with _translated():
            target = export_target(self.farm.exports.resolve(name_or_mac))
        if target.writes_vdisk:
            self._writes[target.device_id] = target.version
        return target

    def resolve_vdisk_view(self, vdisk_name: str) -> port.VdiskView:
        with _translated():
            view = self.farm.exports.view(vdisk_name)
        return port.VdiskView(
            vdisk_id=view.vdisk_id,
            vdisk_name=view.vdisk_name,
            access_mode=view.access_mode,
            version=view.version,
            chain=tuple(view.chain),
            chain_formats=tuple(view.chain_formats),
            size=view.size,
            require_tls=view.require_tls,
            sha256=view.sha256,
        )

    def list_exports(self) -> list[tuple[str, str]]:
        with _translated():
            return self.farm.exports.list()

    def acquire_lock(self, vdisk_id: int, device_id: int, lease_seconds: float) -> port.LockGrant:
        with _translated():
            grant = self.farm.locks.acquire(
                vdisk_id, device_id, lease_seconds, self._writes.get(device_id)
            )
        return port.LockGrant(token=grant.token, expires_at=grant.expires_at)

    def renew_lock(self, vdisk_id: int, device_id: int, token: int, lease_seconds: float) -> bool:
        with _translated():
            return self.farm.locks.renew(vdisk_id, device_id, token, lease_seconds)

    def release_lock(self, vdisk_id: int, device_id: int, token: int) -> None:
        with _translated():
            self.farm.locks.release(vdisk_id, device_id, token)

    def session_started(
        self, device_id: int, vdisk_id: int, version: int, client_ip: str | None
    ) -> None:
        with _translated():
            self.farm.sessions.started(device_id, vdisk_id, version, client_ip)

    def session_ended(self, device_id: int) -> None:
        with _translated():
            self.farm.sessions.ended(device_id)

    def cache_full(self, device_id: int, used_bytes: int, limit_bytes: int | None) -> None:
        with _translated():
            self.farm.sessions.cache_full(device_id, used_bytes, limit_bytes)

    def report_cache_usage(self, used: Mapping[int, int]) -> None:
        with _translated():
            self.farm.sessions.report_cache_usage(dict(used))

    def reconcile_sessions(self, live: Mapping[int, port.LiveSession]) -> tuple[int, int]:
        records = {
            device_id: ServiceLiveSession(s.vdisk_id, s.version, s.client_ip)
            for device_id, s in live.items()
        }
        with _translated():
            return self.farm.sessions.reconcile(records)

    def pending_moves(self) -> list[port.MoveOrder]:
        with _translated():
            orders = self.farm.moves.pending_moves()
        return [
            port.MoveOrder(o.device_id, o.device_name, o.to_server.name, o.requested_at)
            for o in orders
        ]

    def cancel_move(self, device_id: int) -> bool:
        with _translated():
            return self.farm.moves.cancel_move(device_id)
