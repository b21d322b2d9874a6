"""Version rows of a vDisk and their files in this server's store.

Rules:
- The database says which versions exist and what they are; the store must
  hold every file of a chain, listed in its manifest, with the sealed hash
  the database recorded, or that chain is not served here (NotInStore, an
  Unavailable: the stream never serves what it knew of such a copy).
- Helpers only read (and lock the vDisk row for the caller's transaction);
  the services that change versions live in `versions.py` and `merges.py`.
- The checks both vDisk and version services make live here once: versions
  are a standard-mode feature and private mode needs one raw file
  (`check_versioned` / `check_private_allowed`), a version devices booted
  or production is pinned to stays (`check_unused`), and what `verify`
  compares (`version_problems`, `qemu_check_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.models import (
    Device,
    DeviceSession,
    LoginReservation,
    Server,
    Vdisk,
    VdiskVersion,
)
from vdfarm.service import version_rules as rules
from vdfarm.service.errors import Conflict, Invalid, NotFound, NotInStore, Unavailable
from vdfarm.service.locks import HELD, held_message, lock_of, lock_state
from vdfarm.store import qemu_img
from vdfarm.store.errors import StoreError, VdiskExists, VdiskMissing
from vdfarm.store.manifest import Manifest, ManifestFile
from vdfarm.store.qemu_img import QemuImgError
from vdfarm.store.store import Store


@dataclass(frozen=True)
class Chain:
    """The files of one version's chain in this store, base first."""

    number: int
    paths: tuple[Path, ...]
    formats: tuple[str, ...]


def locked_vdisk(session: Session, name: str) -> Vdisk:
    """The vDisk row named NAME, locked for this transaction (PostgreSQL).

    Raises NotFound.
    """
    query = select(Vdisk).where(Vdisk.name == name).with_for_update()
    vdisk = session.scalars(query).one_or_none()
    if vdisk is None:
        raise NotFound(f"no vDisk named {name}")
    return vdisk


def store_failure(name: str, exc: Exception) -> Exception:
    """The service error for a store or qemu-img failure on vDisk NAME."""
    if isinstance(exc, VdiskMissing):
        return NotInStore(f"vDisk {name} is not in this server's store")
    if isinstance(exc, VdiskExists):
        return Conflict(str(exc))
    if isinstance(exc, QemuImgError):
        return Unavailable(f"vDisk {name}: {exc}")
    return Unavailable(f"vDisk {name} in this server's store: {exc}")


def sealed_hash(entry: ManifestFile, vdisk_name: str) -> str:
    """The sha256 of a sealed file of vDisk VDISK_NAME (the store records
    it when it seals, imports or folds a file). Raises Unavailable."""
    if entry.sha256 is None:
        raise Unavailable(f"vDisk {vdisk_name}: file {entry.name} has no recorded hash")
    return entry.sha256


def version_rows(session: Session, vdisk_id: int) -> list[VdiskVersion]:
    """Every version row of a vDisk, oldest first."""
    query = select(VdiskVersion).where(VdiskVersion.vdisk_id == vdisk_id)
    return list(session.scalars(query.order_by(VdiskVersion.number)).all())


def states_of(rows: list[VdiskVersion]) -> list[rules.VersionState]:
    """The rules' view of version rows."""
    return [
        rules.VersionState(
            number=r.number, parent=r.parent_number, access=r.access, production_at=r.production_at
        )
        for r in rows
    ]


def row_of(rows: list[VdiskVersion], number: int) -> VdiskVersion:
    """The row of version NUMBER (the caller knows it exists)."""
    return next(r for r in rows if r.number == number)


def booted_devices(session: Session, vdisk_id: int) -> dict[int, tuple[str, ...]]:
    """Version number → names of the devices with a session on it, by name."""
    query = (
        select(DeviceSession.version, Device.name)
        .join(Device, Device.id == DeviceSession.device_id)
        .where(DeviceSession.vdisk_id == vdisk_id)
        .order_by(Device.name)
    )
    booted: dict[int, list[str]] = {}
    for number, name in session.execute(query).all():
        booted.setdefault(number, []).append(name)
    return {number: tuple(names) for number, names in booted.items()}


def maintenance_in_use(session: Session, vdisk: Vdisk, number: int, now: datetime) -> str | None:
    """Why version NUMBER (open for maintenance) is in use — its lock is held
    or a device booted it — or None if it is not."""
    lock = lock_of(session, vdisk.id)
    if lock is not None and lock_state(lock, now) == HELD:
        return held_message(lock)
    devices = booted_devices(session, vdisk.id).get(number)
    if devices:
        return f"device(s) {', '.join(devices)} booted version {number} of vDisk {vdisk.name}"
    return None


def live_users(session: Session, vdisk: Vdisk, reserved_after: datetime) -> list[str]:
    """Who reads VDISK now or is about to: 'device D on server S' for each
    session (any server) and each login reservation made after
    RESERVED_AFTER (a device on its way), by device name."""
    sessions = session.execute(
        select(Device.name, Server.name)
        .join(DeviceSession, DeviceSession.device_id == Device.id)
        .join(Server, Server.id == DeviceSession.server_id)
        .where(DeviceSession.vdisk_id == vdisk.id)
    ).all()
    reserved = session.execute(
        select(Device.name, Server.name)
        .join(LoginReservation, LoginReservation.device_id == Device.id)
        .join(Server, Server.id == LoginReservation.server_id)
        .where(Device.vdisk_id == vdisk.id, LoginReservation.reserved_at > reserved_after)
    ).all()
    users = {f"device {d} on server {s}" for d, s in sessions}
    users |= {f"device {d} (logging in to server {s})" for d, s in reserved}
    return sorted(users)


def store_manifest(store: Store, vdisk_name: str) -> Manifest:
    """STORE's manifest of a vDisk. Raises NotInStore (an Unavailable)."""
    try:
        return store.manifest(vdisk_name)
    except VdiskMissing as exc:
        raise NotInStore(f"vDisk {vdisk_name} is not in this server's store") from exc
    except StoreError as exc:
        raise NotInStore(f"vDisk {vdisk_name} in this server's store: {exc}") from exc


def chain_in_store(
    store: Store,
    vdisk_name: str,
    rows: list[VdiskVersion],
    number: int,
    manifest: Manifest | None = None,
) -> Chain:
    """Version NUMBER's chain as files of this store.

    Raises NotInStore, an Unavailable (vDisk or one of the chain's files
    not here, or not the file the database sealed).
    """
    manifest = manifest or store_manifest(store, vdisk_name)
    numbers = rules.chain_numbers(states_of(rows), number)
    directory = store.root / vdisk_name
    paths, formats = [], []
    for row in (row_of(rows, n) for n in numbers):
        entry = manifest.file(row.file_name)
        if (
            entry is None
            or entry.format != row.format
            or (row.sha256 is not None and entry.sha256 != row.sha256)
        ):
            raise NotInStore(
                f"version {row.number} of vDisk {vdisk_name} is not in this server's store"
            )
        paths.append(directory / row.file_name)
        formats.append(row.format)
    return Chain(number=number, paths=tuple(paths), formats=tuple(formats))


def check_store_matches(store: Store, vdisk_name: str, rows: list[VdiskVersion]) -> Manifest:
    """STORE's manifest, if its chain is exactly the database's chain.

    Raises Unavailable.
    """
    manifest = store_manifest(store, vdisk_name)
    top = rules.newest(states_of(rows)).number
    chain = chain_in_store(store, vdisk_name, rows, top, manifest)
    if [p.name for p in chain.paths] != [f.name for f in manifest.files]:
        raise Unavailable(
            f"the store's manifest of vDisk {vdisk_name} does not match the farm database"
        )
    return manifest


def check_versioned(vdisk: Vdisk) -> None:
    """Versions are a standard-mode feature (the other side of
    `check_private_allowed`). Raises Invalid."""
    if vdisk.access_mode == rules.PRIVATE:
        raise Invalid(
            f"vDisk {vdisk.name} is in private mode: versions are for standard "
            f"mode (vdfarm vdisk set {vdisk.name} --mode standard)"
        )


def check_private_allowed(session: Session, vdisk: Vdisk) -> None:
    """Private mode needs a vDisk that is one raw file (the other side of
    `check_versioned`) without boot files (they are replicated with
    versions; a private vDisk is neither). Raises Invalid."""
    rows = version_rows(session, vdisk.id)
    if len(rows) != 1 or rows[0].format != "raw":
        raise Invalid(
            f"vDisk {vdisk.name} has versions (or a qcow2 base): private mode needs "
            f"a single raw file; export it and import the copy instead"
        )
    if rows[0].boot_cmdline is not None:
        raise Invalid(
            f"vDisk {vdisk.name} has boot files: a private vDisk does not boot over the "
            f"network; remove them first (vdfarm vdisk boot {vdisk.name} --clear)"
        )


def check_unused(session: Session, vdisk: Vdisk, number: int, doing: str) -> None:
    """Refuse DOING (e.g. "deleted") to version NUMBER while devices booted
    it or production is pinned to it. Raises Conflict."""
    devices = booted_devices(session, vdisk.id).get(number)
    if devices:
        raise Conflict(
            f"device(s) {', '.join(devices)} booted version {number} of vDisk "
            f"{vdisk.name}; it cannot be {doing} until they disconnect"
        )
    if vdisk.override_version == number:
        raise Conflict(
            f"production devices of vDisk {vdisk.name} are pinned to version "
            f"{number}; clear it first (vdfarm version override {vdisk.name} "
            f"--clear)"
        )


def version_problems(manifest: Manifest, rows: list[tuple[int, str, str, str | None]]) -> list[str]:
    """Where the store's MANIFEST and the database's version ROWS (number,
    file, format, sha256) disagree."""
    problems = []
    for number, file_name, fmt, sha256 in rows:
        entry = manifest.file(file_name)
        if entry is None:
            problems.append(f"version {number} ({file_name}) is not in the store's manifest")
        elif entry.format != fmt or entry.sha256 != sha256:
            problems.append(
                f"version {number} ({file_name}): the store's manifest does not "
                f"match the farm database"
            )
    if len(manifest.files) != len(rows):
        problems.append("the store's chain and the farm's versions differ")
    return problems


def qemu_check_problems(directory: Path, manifest: Manifest) -> list[str]:
    """What `qemu-img check` finds wrong in the sealed qcow2 files of MANIFEST."""
    problems = []
    for entry in manifest.files:
        if entry.sealed and entry.format == "qcow2":
            try:
                qemu_img.check(directory / entry.name, entry.format)
            except QemuImgError as exc:
                problems.append(str(exc))
    return problems
