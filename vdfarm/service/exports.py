"""Export resolution: which file, mode and cache to serve to a device.

Rules: the NBD export name is the device's name or its MAC (any common
spelling); a name match wins over a MAC match. The answer is a frozen
`ExportTarget` the stream service can keep while the database is down.
A *view* (`resolve_vdisk_view`) names a vDisk directly, for read-only access
with no device and no lock; it shows what production devices boot.

Versions: a standard-mode device gets the chain of the version its type boots
(see `version_rules.device_boot`), read-only, except a maintenance device on
the open maintenance version. A private-mode vDisk has only its base: a
chain of one file, written to, as before versions existed. Whether the
device writes to the vDisk (the stream then opens the top read/write under
the vDisk lock) is `version_rules.writes_vdisk`'s answer, carried as
`ExportTarget.writes_vdisk` (and, as before, `writable`).

Kept versions: a running device keeps the version it booted until it boots
again (a promotion reaches devices at their next boot). So a device's
export serves, instead of the current version, the version named by
1. its login reservation, if fresh (made within `login.RESERVATION_LIFETIME`)
   and naming one (a failover login of its agent: `login`); a fresh
   reservation naming none is a boot: the current version;
2. else its session row on this server (a reconnect, e.g. within the
   stream's grace period).
Only a version `version_rules.kept_version` allows (it still exists, is
sealed, the device type boots it); one merged away or deleted is refused
(NotFound), never replaced by another version's bytes.

Identity: `sha256` is the served version's hash from `vdisk_versions` (what
login tells the device's agent, and the stream repeats in the export's NBD
description so the agent can check a new server serves the same copy); None
while the copy served is written (a private vDisk, an open maintenance
version): it has no fixed hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import Device, DeviceSession, LoginReservation, Vdisk, VdiskVersion
from vdfarm.service import version_rules as rules
from vdfarm.service.chains import (
    Chain,
    chain_in_store,
    states_of,
    store_manifest,
    version_rows,
)
from vdfarm.service.deps import Clock, SessionFactory, ThisServer
from vdfarm.service.errors import Invalid, NotFound
from vdfarm.service.login import RESERVATION_LIFETIME
from vdfarm.service.validation import cache_limit_bytes, name_wins, parse_mac
from vdfarm.store.store import Store


@dataclass(frozen=True)
class ExportTarget:
    """Everything the stream service needs to serve one device.

    `version` is the vDisk version the device boots (0: the original base);
    `chain` its files in this server's store (absolute, base first, the
    booted version last) and `chain_formats` their formats ("raw"/"qcow2");
    `path` is `chain[-1]`. `writes_vdisk` says whether the device writes to
    the vDisk itself (`version_rules.writes_vdisk`: a private vDisk, or a
    maintenance device on the open maintenance version): then it needs the
    vDisk's lock and cannot move to another server. `writable` is the same
    answer under its older name. `description` is the vDisk's description.
    `sha256` is the served version's hash (None: the copy is written, see
    the module rules). `require_tls` says the vDisk is served only over TLS (`vdisk set
    --require-tls`): the stream refuses a plaintext client.
    """

    device_id: int
    device_name: str
    mac: str | None
    device_type: str
    vdisk_id: int
    vdisk_name: str
    access_mode: str
    path: Path
    size: int
    write_cache_type: str
    write_cache_limit_bytes: int | None
    description: str
    version: int
    chain: tuple[Path, ...]
    chain_formats: tuple[str, ...]
    writable: bool
    writes_vdisk: bool
    require_tls: bool
    sha256: str | None = None


def served_sha256(rows: list[VdiskVersion], number: int, writes: bool) -> str | None:
    """The hash of version NUMBER as served: None if the device writes to
    it (its copy has no fixed hash), it is open for maintenance, or it has
    no row (a private vDisk's store top)."""
    if writes:
        return None
    row = next((r for r in rows if r.number == number), None)
    if row is None or row.access == rules.MAINTENANCE:
        return None
    return row.sha256


def device_match(name_or_mac: str) -> ColumnElement[bool]:
    """Devices named NAME_OR_MAC, or with that MAC if it is one (any common
    spelling); pick with `validation.name_wins`."""
    mac = parse_mac(name_or_mac)
    match = Device.name == name_or_mac
    return match if mac is None else or_(match, Device.mac == mac)


def find_device(session: Session, name_or_mac: str) -> Device | None:
    """The device named NAME_OR_MAC, else the one with that MAC, else None."""
    devices = session.scalars(select(Device).where(device_match(name_or_mac))).all()
    found = name_wins(devices, name_or_mac, lambda d: d.name)
    return found[0] if found else None


def device_and_vdisk(session: Session, name_or_mac: str) -> tuple[Device, Vdisk]:
    """The device called NAME_OR_MAC and its assigned vDisk (one query; a
    name match wins over a MAC match, as in `find_device`).

    Raises NotFound ("no device named X"), Invalid ("device X has no vDisk
    assigned").
    """
    rows = session.execute(
        select(Device, Vdisk)
        .outerjoin(Vdisk, Vdisk.id == Device.vdisk_id)
        .where(device_match(name_or_mac))
    ).all()
    found = name_wins(rows, name_or_mac, lambda r: r[0].name)
    if not found:
        raise NotFound(f"no device named {name_or_mac}")
    device, vdisk = found[0]
    if vdisk is None:
        raise Invalid(f"device {device.name} has no vDisk assigned")
    return device, vdisk


@dataclass(frozen=True)
class VdiskView:
    """A vDisk served read-only by name (export `vdisk/NAME`): no device, no lock.

    It shows the version production devices boot: `chain`/`chain_formats` as
    in ExportTarget, `path` = `chain[-1]`; `require_tls` and `sha256` as in
    ExportTarget.
    """

    vdisk_id: int
    vdisk_name: str
    access_mode: str
    path: Path
    size: int
    description: str
    version: int
    chain: tuple[Path, ...]
    chain_formats: tuple[str, ...]
    require_tls: bool
    sha256: str | None = None


def _is_private(vdisk: Vdisk) -> bool:
    """True if VDISK is in private mode (its one file is written: no fixed hash)."""
    return vdisk.access_mode == rules.PRIVATE


class ExportService:
    """What the stream serves: a device's export, a vDisk's read-only view,
    the list of exports."""

    def __init__(
        self, session: SessionFactory, clock: Clock, store: Store, here: ThisServer
    ) -> None:
        self._session = session
        self._clock = clock
        self._store = store
        self._here = here

    def resolve(self, name_or_mac: str) -> ExportTarget:
        """The ExportTarget of the device called NAME_OR_MAC.

        Raises NotFound ("no device named X"; the version the device runs
        no longer exists), Invalid ("device X has no vDisk assigned"; a kept
        version it may not run), Unavailable ("vDisk X is not in this
        server's store", "version N of vDisk X is not in this server's
        store", or DB down).
        """
        with self._session() as session:
            device, vdisk = device_and_vdisk(session, name_or_mac)
            rows = version_rows(session, vdisk.id)
            kept = self._kept_number(session, device, vdisk)
            chain, writes = self._device_chain(vdisk, rows, device.device_type, kept, device.name)
            return ExportTarget(
                device_id=device.id,
                device_name=device.name,
                mac=device.mac,
                device_type=device.device_type,
                vdisk_id=vdisk.id,
                vdisk_name=vdisk.name,
                access_mode=vdisk.access_mode,
                path=chain.paths[-1],
                size=vdisk.size,
                write_cache_type=vdisk.write_cache_type,
                write_cache_limit_bytes=cache_limit_bytes(vdisk.write_cache_limit_mb),
                description=vdisk.description,
                version=chain.number,
                chain=chain.paths,
                chain_formats=chain.formats,
                writable=writes,
                writes_vdisk=writes,
                require_tls=vdisk.require_tls,
                sha256=served_sha256(rows, chain.number, writes or _is_private(vdisk)),
            )

    def _kept_number(self, session: Session, device: Device, vdisk: Vdisk) -> int | None:
        """The version DEVICE runs and keeps (see the module rules: its fresh
        reservation's, else its session's on this server), or None (a boot:
        the current version)."""
        reservation = session.execute(
            select(LoginReservation.version, LoginReservation.reserved_at).where(
                LoginReservation.device_id == device.id
            )
        ).first()
        if reservation is not None and (
            reservation.reserved_at > self._clock() - RESERVATION_LIFETIME
        ):
            return reservation.version
        return session.scalar(
            select(DeviceSession.version).where(
                DeviceSession.device_id == device.id,
                DeviceSession.vdisk_id == vdisk.id,
                DeviceSession.server_id == self._here.id,
            )
        )

    def _device_chain(
        self,
        vdisk: Vdisk,
        rows: list[VdiskVersion],
        device_type: str,
        kept: int | None = None,
        device_name: str = "",
    ) -> tuple[Chain, bool]:
        """The chain a device of DEVICE_TYPE boots from VDISK (whose version
        rows are ROWS), and whether it writes to it; KEPT: the version the
        running device keeps instead (`version_rules.kept_version`).
        Raises NotFound, Invalid (a KEPT version it may not run), NotInStore."""
        now = self._clock()
        states = states_of(rows)
        choice = rules.device_boot(
            states, vdisk.access_mode, device_type, vdisk.override_version, now
        )
        if kept is not None and vdisk.access_mode != rules.PRIVATE:
            choice = rules.kept_version(
                states,
                vdisk.access_mode,
                device_type,
                kept,
                choice,
                now,
                (device_name, vdisk.name),
            )
        if vdisk.access_mode == rules.PRIVATE:  # one file: the store's top
            top = store_manifest(self._store, vdisk.name).top
            number = top.version if top.version is not None else choice.number
            path = self._store.root / vdisk.name / top.name
            return Chain(number=number, paths=(path,), formats=(top.format,)), choice.writable
        return chain_in_store(self._store, vdisk.name, rows, choice.number), choice.writable

    def view(self, vdisk_name: str) -> VdiskView:
        """The read-only view of vDisk VDISK_NAME.

        Raises NotFound ("no vDisk named X"), Unavailable ("vDisk X is not in
        this server's store", or DB down).
        """
        with self._session() as session:
            vdisk = session.scalars(select(Vdisk).where(Vdisk.name == vdisk_name)).one_or_none()
            if vdisk is None:
                raise NotFound(f"no vDisk named {vdisk_name}")
            rows = version_rows(session, vdisk.id)
            chain, _ = self._device_chain(vdisk, rows, rules.PRODUCTION)
            return VdiskView(
                vdisk_id=vdisk.id,
                vdisk_name=vdisk.name,
                access_mode=vdisk.access_mode,
                path=chain.paths[-1],
                size=vdisk.size,
                description=vdisk.description,
                version=chain.number,
                chain=chain.paths,
                chain_formats=chain.formats,
                require_tls=vdisk.require_tls,
                sha256=served_sha256(rows, chain.number, _is_private(vdisk)),
            )

    def list(self) -> list[tuple[str, str]]:
        """(device name, "vDisk NAME (MODE)") of every device with a vDisk, by name.

        Raises Unavailable (DB down).
        """
        with self._session() as session:
            rows = session.execute(
                select(Device.name, Vdisk.name, Vdisk.access_mode)
                .join(Vdisk, Device.vdisk_id == Vdisk.id)
                .order_by(Device.name)
            ).all()
            return [(device, f"vDisk {vdisk} ({mode})") for device, vdisk, mode in rows]
