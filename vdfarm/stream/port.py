"""The stream's port: every call the stream makes to the farm, and every
answer and error that crosses it.

Rules:
- The stream (vdfarm.stream) reaches the farm only through `FarmPort`; it
  imports nothing of the service, the API, the CLI, the farm models or the
  store. The daemon (vdfarm/daemon/farm_port.py) implements the port over
  the service layer; tests implement it in memory.
- Every call is blocking (the stream runs it on an executor thread, never
  on the event loop) and may raise `FarmUnavailable` when the database is
  away; each call documents the other errors it may raise.
- What crosses is frozen dataclasses of plain values (ints, text, paths,
  datetimes): the stream may keep them while the database is away.
- Errors are real types, told apart by class: `UnknownExport` (no such
  device or vDisk), `ExportRefused` (the device cannot be served as it
  is), `LockConflict` (the vDisk is locked elsewhere, or the farm's state
  says no), `FarmUnavailable` (the database is away, or a file is not in
  this server's store). `str(error)` is one line for a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

# -- what crosses the port -----------------------------------------------------


@dataclass(frozen=True)
class ExportTarget:
    """What a device's export name resolves to: the files to serve and how.

    `chain` holds the version's files in this server's store (absolute,
    base first, the booted version last), `chain_formats` their formats
    ("raw" / "qcow2"). `writes_vdisk` is True when the device writes to its
    vDisk itself (a private vDisk, or a maintenance device on the open
    maintenance version): the chain's top is opened read/write under the
    vDisk lock. Otherwise the chain is shared read-only under a write cache
    of `write_cache_type` holding at most `write_cache_limit_bytes` (None:
    the vDisk's size). `require_tls`: the vDisk is served only to a client
    that started TLS (NBD_OPT_STARTTLS); a plaintext client is refused.
    `sha256` is the served version's hash (None while the copy served is
    written: a private vDisk, an open maintenance version); the export's
    NBD description repeats it (`export_description`).
    """

    device_id: int
    device_name: str
    vdisk_id: int
    vdisk_name: str
    access_mode: str
    version: int
    chain: tuple[Path, ...]
    chain_formats: tuple[str, ...]
    size: int
    write_cache_type: str
    write_cache_limit_bytes: int | None
    writes_vdisk: bool
    require_tls: bool
    sha256: str | None = None


@dataclass(frozen=True)
class VdiskView:
    """A vDisk served read-only by name (export `vdisk/NAME`): no device, no
    lock; the version production devices boot, `chain`, `require_tls` and
    `sha256` as in ExportTarget."""

    vdisk_id: int
    vdisk_name: str
    access_mode: str
    version: int
    chain: tuple[Path, ...]
    chain_formats: tuple[str, ...]
    size: int
    require_tls: bool
    sha256: str | None = None


def export_description(target: ExportTarget | VdiskView) -> str:
    """The NBD description of an export: `vdfarm vdisk=NAME version=N
    sha256=HEX size=BYTES` (`sha256=-` when the copy has no fixed hash), so
    a device's agent can check that a server it fails over to serves the
    same copy login named."""
    return (
        f"vdfarm vdisk={target.vdisk_name} version={target.version} "
        f"sha256={target.sha256 or '-'} size={target.size}"
    )


@dataclass(frozen=True)
class LockGrant:
    """A vDisk lock handed to a device: its fencing token and lease end."""

    token: int
    expires_at: datetime


@dataclass(frozen=True)
class MoveOrder:
    """A device connected here that must reconnect to server `to_server`
    (its name), ordered at `requested_at` (None: unknown)."""

    device_id: int
    device_name: str
    to_server: str
    requested_at: datetime | None


@dataclass(frozen=True)
class LiveSession:
    """What this server streams to one connected device."""

    vdisk_id: int
    version: int
    client_ip: str | None = None


# -- errors the stream can see ---------------------------------------------------


class FarmError(Exception):
    """Base of every error a port call raises; `str()` is one human line."""


class UnknownExport(FarmError):
    """No device (or vDisk, for a view) has that name or MAC."""


class ExportRefused(FarmError):
    """The device exists but cannot be served as it is (no vDisk assigned,
    bad argument)."""


class LockConflict(FarmError):
    """The farm's state says no: the vDisk is locked by another device or
    written on another server."""


class FarmUnavailable(FarmError):
    """The farm database is away (or busy), or a file the answer needs is
    not in this server's store (NotInStore). Streaming what is known goes
    on while the database is away."""


class NotInStore(FarmUnavailable):
    """The device's vDisk version is not in this server's store as the farm
    sealed it (missing, or another copy): what the server knew of the
    device before must not stand in for it."""


# -- the port ---------------------------------------------------------------------


class FarmPort(Protocol):
    """Every call the stream makes to the farm. All calls block; every one
    may raise FarmUnavailable."""

    def now(self) -> datetime:
        """The farm's clock (aware UTC)."""
        ...

    def resolve_export(self, name_or_mac: str) -> ExportTarget:
        """What to serve to the device called NAME_OR_MAC (a name or a MAC).

        Raises UnknownExport, ExportRefused, FarmUnavailable.
        """
        ...

    def resolve_vdisk_view(self, vdisk_name: str) -> VdiskView:
        """The read-only view of vDisk VDISK_NAME.

        Raises UnknownExport, FarmUnavailable.
        """
        ...

    def list_exports(self) -> list[tuple[str, str]]:
        """(device name, description) of every device with a vDisk.

        Raises FarmUnavailable.
        """
        ...

    def acquire_lock(self, vdisk_id: int, device_id: int, lease_seconds: float) -> LockGrant:
        """Take the lock of a vDisk for a device for LEASE_SECONDS.

        Raises LockConflict (held elsewhere, or another server is its home),
        UnknownExport (vDisk or device gone), ExportRefused (bad lease),
        FarmUnavailable.
        """
        ...

    def renew_lock(self, vdisk_id: int, device_id: int, token: int, lease_seconds: float) -> bool:
        """Extend a held lease; False if TOKEN no longer holds the lock (the
        holder is fenced). Raises ExportRefused (bad lease), FarmUnavailable."""
        ...

    def release_lock(self, vdisk_id: int, device_id: int, token: int) -> None:
        """Give up a lock (no-op if TOKEN is stale). Raises FarmUnavailable."""
        ...

    def session_started(
        self, device_id: int, vdisk_id: int, version: int, client_ip: str | None
    ) -> None:
        """Record that a device booted VERSION of a vDisk from this server.

        Raises UnknownExport (device, vDisk or version gone), FarmUnavailable.
        """
        ...

    def session_ended(self, device_id: int) -> None:
        """Forget this server's session of a device (no-op if none), move
        order included. Raises FarmUnavailable."""
        ...

    def cache_full(self, device_id: int, used_bytes: int, limit_bytes: int | None) -> None:
        """Audit that a device's write cache refused a write.

        Raises UnknownExport (device gone), FarmUnavailable.
        """
        ...

    def report_cache_usage(self, used: Mapping[int, int]) -> None:
        """Store the write-cache bytes ({device_id: bytes}) of devices
        connected here. Raises FarmUnavailable."""
        ...

    def reconcile_sessions(self, live: Mapping[int, LiveSession]) -> tuple[int, int]:
        """Make this server's session records match LIVE after records were
        lost; returns (added, removed). Raises FarmUnavailable."""
        ...

    def pending_moves(self) -> list[MoveOrder]:
        """The move orders for devices connected to this server, by device
        name. Raises FarmUnavailable."""
        ...

    def cancel_move(self, device_id: int) -> bool:
        """Drop the move order of a device's session here; False if none.

        Raises FarmUnavailable.
        """
        ...
