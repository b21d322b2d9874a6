"""Export resolution: which file, mode and cache to serve to a device.

Rules: the NBD export name is the device's name or its MAC (any common
spelling); a name match wins over a MAC match. The answer is a frozen
`ExportTarget` the stream service can keep while the database is down.
A *view* (`resolve_vdisk_view`) names a vDisk directly, for read-only access
with no device and no lock; it shows what production devices boot.

Versions: a standard-mode device gets the chain of the version its type boots
(see `version_rules.boot_choice`), read-only, except a maintenance device on
the open maintenance version (`writable`: the stream opens the top read/write
under the vDisk lock). A private-mode vDisk has only its base: a chain of one
file, writable, as before versions existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import Device, Vdisk
from vdfarm.service import version_rules as rules
from vdfarm.service.chains import (
    Chain,
    chain_in_store,
    states_of,
    store_manifest,
    version_rows,
)
from vdfarm.service.errors import Invalid, NotFound
from vdfarm.service.validation import parse_mac

if TYPE_CHECKING:
    from vdfarm.service.context import Farm

MIB = 1024 * 1024


@dataclass(frozen=True)
class ExportTarget:
    """Everything the stream service needs to serve one device.

    `version` is the vDisk version the device boots (0: the original base);
    `chain` its files in this server's store (absolute, base first, the
    booted version last) and `chain_formats` their formats ("raw"/"qcow2");
    `path` is `chain[-1]`; `writable` is True only for a private vDisk and
    for a maintenance device on the open maintenance version.
    `description` is the vDisk's description.
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


def find_device(session: Session, name_or_mac: str) -> Device | None:
    """The device named NAME_OR_MAC, else the one with that MAC, else None."""
    device = session.scalars(select(Device).where(Device.name == name_or_mac)).one_or_none()
    if device is None and (mac := parse_mac(name_or_mac)) is not None:
        device = session.scalars(select(Device).where(Device.mac == mac)).one_or_none()
    return device


def device_and_vdisk(session: Session, name_or_mac: str) -> tuple[Device, Vdisk]:
    """The device called NAME_OR_MAC and its assigned vDisk (one query; a
    name match wins over a MAC match, as in `find_device`).

    Raises NotFound ("no device named X"), Invalid ("device X has no vDisk
    assigned").
    """
    mac = parse_mac(name_or_mac)
    match = Device.name == name_or_mac
    if mac is not None:
        match = or_(match, Device.mac == mac)
    rows = session.execute(
        select(Device, Vdisk).outerjoin(Vdisk, Vdisk.id == Device.vdisk_id).where(match)
    ).all()
    found = next((r for r in rows if r[0].name == name_or_mac), rows[0] if rows else None)
    if found is None:
        raise NotFound(f"no device named {name_or_mac}")
    device, vdisk = found
    if vdisk is None:
        raise Invalid(f"device {device.name} has no vDisk assigned")
    return device, vdisk


def resolve_export(farm: Farm, name_or_mac: str) -> ExportTarget:
    """The ExportTarget of the device called NAME_OR_MAC.

    Raises NotFound ("no device named X"), Invalid ("device X has no vDisk
    assigned"), Unavailable ("vDisk X is not in this server's store", "version
    N of vDisk X is not in this server's store", or DB down).
    """
    with farm.session() as session:
        device, vdisk = device_and_vdisk(session, name_or_mac)
        chain, writable = _device_chain(farm, session, vdisk, device.device_type)
        limit = vdisk.write_cache_limit_mb
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
            write_cache_limit_bytes=None if limit is None else limit * MIB,
            description=vdisk.description,
            version=chain.number,
            chain=chain.paths,
            chain_formats=chain.formats,
            writable=writable,
        )


def _device_chain(
    farm: Farm, session: Session, vdisk: Vdisk, device_type: str
) -> tuple[Chain, bool]:
    rows = version_rows(session, vdisk.id)
    if vdisk.access_mode == "private":
        manifest = store_manifest(farm, vdisk.name)
        top = manifest.top
        number = top.version if top.version is not None else rules.newest(states_of(rows)).number
        path = farm.store.root / vdisk.name / top.name
        return Chain(number=number, paths=(path,), formats=(top.format,)), True
    choice = rules.boot_choice(states_of(rows), device_type, vdisk.override_version, farm.now())
    return chain_in_store(farm, vdisk.name, rows, choice.number), choice.writable


@dataclass(frozen=True)
class VdiskView:
    """A vDisk served read-only by name (export `vdisk/NAME`): no device, no lock.

    It shows the version production devices boot: `chain`/`chain_formats` as
    in ExportTarget, `path` = `chain[-1]`.
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


def resolve_vdisk_view(farm: Farm, vdisk_name: str) -> VdiskView:
    """The read-only view of vDisk VDISK_NAME.

    Raises NotFound ("no vDisk named X"), Unavailable ("vDisk X is not in
    this server's store", or DB down).
    """
    with farm.session() as session:
        vdisk = session.scalars(select(Vdisk).where(Vdisk.name == vdisk_name)).one_or_none()
        if vdisk is None:
            raise NotFound(f"no vDisk named {vdisk_name}")
        chain, _ = _device_chain(farm, session, vdisk, "production")
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
        )


def list_exports(farm: Farm) -> list[tuple[str, str]]:
    """(device name, "vDisk NAME (MODE)") of every device with a vDisk, by name.

    Raises Unavailable (DB down).
    """
    with farm.session() as session:
        rows = session.execute(
            select(Device.name, Vdisk.name, Vdisk.access_mode)
            .join(Vdisk, Device.vdisk_id == Vdisk.id)
            .order_by(Device.name)
        ).all()
        return [(device, f"vDisk {vdisk} ({mode})") for device, vdisk, mode in rows]
