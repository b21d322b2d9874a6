"""A version's boot files as the front ends see them (`BootInfo`), and the
reads and checks the services share about them.

Rules:
- A version boots over the network from a kernel, an optional initramfs
  and a kernel command line (`version_boot_files`, `boot_cmdline`); each
  file is known by kind, size and sha256 and stored as `<kind>-<sha256>`.
- `check_cmdline` (pure): printable ASCII only — no newline or other
  control character, since the line goes into an iPXE script and the
  kernel's command line — and at most MAX_CMDLINE characters (the kernel
  takes 2048 on x86; the rest is left for what the boot path adds, such
  as the server and export). It may be empty.
- Reads only; `apply_boot` changes the rows of one version in the caller's
  transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import BOOT_KINDS, VdiskVersion, VersionBootFile
from vdfarm.service.errors import Invalid
from vdfarm.store.manifest import BootFile, boot_file_name

MAX_CMDLINE = 1024
KERNEL, INITRD = BOOT_KINDS


@dataclass(frozen=True)
class BootFileInfo:
    """One boot file of a version: its kind, size, sha256 and store file name."""

    kind: str
    size: int
    sha256: str
    file: str


@dataclass(frozen=True)
class BootInfo:
    """What a version boots over the network: a kernel, an initramfs (or
    none) and the kernel command line."""

    kernel: BootFileInfo
    initrd: BootFileInfo | None
    cmdline: str

    def files(self) -> tuple[BootFileInfo, ...]:
        return (self.kernel,) if self.initrd is None else (self.kernel, self.initrd)


def check_cmdline(cmdline: object) -> str:
    """CMDLINE if it may be a version's kernel command line. Raises Invalid."""
    if not isinstance(cmdline, str):
        raise Invalid("give the kernel command line as text")
    if len(cmdline) > MAX_CMDLINE:
        raise Invalid(
            f"the kernel command line has {len(cmdline)} characters: at most {MAX_CMDLINE}"
        )
    bad = next((c for c in cmdline if not " " <= c <= "~"), None)
    if bad is not None:
        raise Invalid(
            f"the kernel command line holds {bad!r}: use printable ASCII only "
            "(no newline, tab or other control character)"
        )
    return cmdline


def file_info(row: VersionBootFile) -> BootFileInfo:
    return BootFileInfo(
        kind=row.kind, size=row.size, sha256=row.sha256, file=boot_file_name(row.kind, row.sha256)
    )


def boot_infos(session: Session, versions: Iterable[VdiskVersion]) -> dict[int, BootInfo]:
    """Version row id -> its BootInfo, for the VERSIONS that have boot files."""
    with_boot = {v.id: v for v in versions if v.boot_cmdline is not None}
    if not with_boot:
        return {}
    rows = session.scalars(
        select(VersionBootFile).where(VersionBootFile.version_id.in_(list(with_boot)))
    ).all()
    files: dict[int, dict[str, BootFileInfo]] = {}
    for row in rows:
        files.setdefault(row.version_id, {})[row.kind] = file_info(row)
    infos = {}
    for version_id, version in with_boot.items():
        kinds = files.get(version_id, {})
        if KERNEL in kinds:
            infos[version_id] = BootInfo(
                kernel=kinds[KERNEL], initrd=kinds.get(INITRD), cmdline=version.boot_cmdline or ""
            )
    return infos


def boot_files_of(session: Session, vdisk_id: int) -> dict[str, BootFile]:
    """Every boot file some version of vDisk VDISK_ID boots, by store name."""
    rows = session.scalars(
        select(VersionBootFile)
        .join(VdiskVersion, VdiskVersion.id == VersionBootFile.version_id)
        .where(VdiskVersion.vdisk_id == vdisk_id)
    ).all()
    found = {}
    for row in rows:
        entry = BootFile(kind=row.kind, size=row.size, sha256=row.sha256)
        found[entry.name] = entry
    return found


def apply_boot(
    session: Session,
    version: VdiskVersion,
    files: Mapping[str, BootFile | None],
    cmdline: str | None,
) -> None:
    """Give VERSION the boot files FILES (kind -> file; None removes that
    kind; kinds not named stay) and CMDLINE (None: unchanged). A version
    left without a kernel has no boot files at all (its command line goes
    too)."""
    current = {
        r.kind: r
        for r in session.scalars(
            select(VersionBootFile).where(VersionBootFile.version_id == version.id)
        ).all()
    }
    for kind, entry in files.items():
        row = current.get(kind)
        if entry is None:
            if row is not None:
                session.delete(current.pop(kind))
        elif row is not None:
            row.size, row.sha256 = entry.size, entry.sha256  # in place: one row per kind
        else:
            current[kind] = VersionBootFile(
                version_id=version.id, kind=kind, size=entry.size, sha256=entry.sha256
            )
            session.add(current[kind])
    session.flush()
    if KERNEL not in current:
        session.execute(delete(VersionBootFile).where(VersionBootFile.version_id == version.id))
        version.boot_cmdline = None
    elif cmdline is not None:
        version.boot_cmdline = cmdline
    elif version.boot_cmdline is None:
        version.boot_cmdline = ""


def copy_boot(session: Session, parent: VdiskVersion, child: VdiskVersion) -> None:
    """Give CHILD (a new version, flushed) the boot files of PARENT."""
    rows = session.scalars(
        select(VersionBootFile).where(VersionBootFile.version_id == parent.id)
    ).all()
    for row in rows:
        session.add(
            VersionBootFile(version_id=child.id, kind=row.kind, size=row.size, sha256=row.sha256)
        )
    child.boot_cmdline = parent.boot_cmdline
