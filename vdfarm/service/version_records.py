"""What the front ends see of versions: `VersionInfo`, `PromoteResult`, and
`version_infos`, which builds them from the rows and this store.

Rules: plain frozen records and one reader; no changes. `versions` and
`promotions` both build on it (and re-export the records).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from vdfarm.farm.models import Vdisk
from vdfarm.service import version_rules as rules
from vdfarm.service.boot_records import BootInfo, boot_infos
from vdfarm.service.chains import booted_devices, states_of, version_rows
from vdfarm.service.merges import MergeResult
from vdfarm.store import versions as store_versions
from vdfarm.store.store import Store


@dataclass(frozen=True)
class VersionInfo:
    """One version as the front ends show it.

    `access` is maintenance / test / production / pending; `size` and
    `sha256` are the sealed file's (size is the current file size while
    open); `devices` booted it; `boots` are the device types that get it now;
    `when_replicated` is the access it is promoted to once every up server
    of its store holds it (`version promote --when-replicated`), if any;
    `boot` is what it boots over the network (None: no boot files).
    """

    vdisk: str
    number: int
    access: str
    parent: int | None
    file: str
    format: str
    size: int | None
    sha256: str | None
    created_at: datetime
    sealed_at: datetime | None
    production_at: datetime | None
    devices: tuple[str, ...]
    boots: tuple[str, ...]
    when_replicated: str | None = None
    boot: BootInfo | None = None


@dataclass(frozen=True)
class PromoteResult:
    """A promoted version, and the automatic merge that followed (if any)."""

    version: VersionInfo
    merged: MergeResult | None
    merge_skipped: str | None


def version_infos(store: Store, session: Session, vdisk: Vdisk, now: datetime) -> list[VersionInfo]:
    """Every version of VDISK as VersionInfo at NOW, oldest first (sizes of
    open versions from STORE)."""
    rows = version_rows(session, vdisk.id)
    states = states_of(rows)
    booted = booted_devices(session, vdisk.id)
    boot = boot_infos(session, rows)
    boots: dict[int, list[str]] = {}
    for device_type in rules.DEVICE_TYPES:
        choice = rules.device_boot(
            states, vdisk.access_mode, device_type, vdisk.override_version, now
        )
        boots.setdefault(choice.number, []).append(device_type)
    return [
        VersionInfo(
            vdisk=vdisk.name,
            number=r.number,
            access=rules.shown_access(s, now),
            parent=r.parent_number,
            file=r.file_name,
            format=r.format,
            size=r.size if r.sha256 else _current_size(store, vdisk.name, r.file_name),
            sha256=r.sha256,
            created_at=r.created_at,
            sealed_at=r.sealed_at,
            production_at=r.production_at,
            devices=booted.get(r.number, ()),
            boots=tuple(boots.get(r.number, ())),
            when_replicated=r.promote_when_replicated,
            boot=boot.get(r.id),
        )
        for r, s in zip(rows, states, strict=True)
    ]


def version_info(
    store: Store, session: Session, vdisk: Vdisk, number: int, now: datetime
) -> VersionInfo:
    """Version NUMBER of VDISK as VersionInfo at NOW, after flushing SESSION's
    pending changes (so the answer shows them). Raises StopIteration if
    VDISK has no such version (callers pass a number they just read)."""
    session.flush()
    return next(i for i in version_infos(store, session, vdisk, now) if i.number == number)


def _current_size(store: Store, vdisk_name: str, file_name: str) -> int | None:
    try:
        return store_versions.file_path(store, vdisk_name, file_name).stat().st_size
    except OSError:
        return None


def version_target(vdisk: str, number: int) -> str:
    """The audit target name of version NUMBER of VDISK."""
    return f"{vdisk} v{number}"
