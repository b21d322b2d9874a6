"""What one server must do to make its store hold what the database says:
the replication task's decisions, with no I/O.

Rules:
- The database's sealed chain of a vDisk (`WantedVdisk.chain`, base first)
  is the truth. A file counts as here when this store's manifest lists it
  sealed, with the database's sha256, and not `unverified`.
- Files are fetched in chain order, one at a time: the first file of the
  chain that is not here, from the peers holding its version (the service
  lists only up servers that hold it verified). A file with no peer waits.
- A fetched file joins the manifest at once (the task adopts the chain up
  to it: every file below it is here already, fetches go in chain order).
- Once every file of the chain is here and the manifest's chain differs
  (new vDisk, new version, merge, deleted version), the manifest is
  rewritten to the chain (`Adopt`); the files that left it are retired and
  removed later, once no session reads them.
- Never touch a vDisk whose manifest holds a file being written here: an
  unsealed top (an open maintenance version of which this server is the
  home) or an `unverified` file (a private copy a device wrote): the
  version commands and the private copy's re-hash own it.
- A vDisk directory the database does not know is an *orphan*: the task
  removes it once it stayed one for a while (an import publishes its
  directory a moment before its database row). A vDisk of a store this
  server is not part of is left as it is.
- Partial copies (`.repl-FILE`) of files no chain wants any more go.
- An adopt is carried out only if a second read of the database, after
  the manifests were read, still has the vDisk with the same chain and
  boot files (`still_decided`): a seal or merge here writes the manifest
  before the database, so a manifest can be ahead of a chain read before it.
- Boot files (`WantedVdisk.boot_files`) come once the chain is here: each
  one the manifest does not list with the database's kind, size and sha256
  is fetched from the peers whose inventory lists it (or waits for one),
  one at a time like any file, and listed as soon as it is verified. The
  manifest's boot files that no version of the chain boots any more leave
  it with an adopt (and are removed from the disk).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vdfarm.service.replication import WantedFile, WantedVdisk
from vdfarm.store.manifest import BootFile, Manifest, ManifestFile
from vdfarm.store.snapshot import PARTIAL_PREFIX


@dataclass(frozen=True)
class Fetch:
    """Copy FILE of vDisk WANTED from one of its version's peers."""

    wanted: WantedVdisk
    file: WantedFile


@dataclass(frozen=True)
class Adopt:
    """Rewrite vDisk NAME's manifest to FILES (all here and verified) and
    BOOT_FILES (those of its boot files the chain still boots)."""

    name: str
    files: tuple[ManifestFile, ...]
    virtual_size: int | None
    boot_files: tuple[BootFile, ...] = ()


@dataclass(frozen=True)
class Waiting:
    """FILE of vDisk WANTED cannot be fetched now: WHY."""

    wanted: WantedVdisk
    file: WantedFile
    why: str


@dataclass(frozen=True)
class Plan:
    """The decisions of one round."""

    fetches: tuple[Fetch, ...] = ()
    adopts: tuple[Adopt, ...] = ()
    waiting: tuple[Waiting, ...] = ()
    orphans: tuple[str, ...] = ()  # vDisk directories the database does not know
    remove_partials: tuple[tuple[str, str], ...] = ()  # (vDisk, partial file name)


def is_here(manifest: Manifest | None, file: WantedFile) -> bool:
    """True if MANIFEST lists FILE sealed with the database's hash."""
    if manifest is None:
        return False
    entry = manifest.file(file.file_name)
    return (
        entry is not None
        and entry.sha256 == file.sha256
        and entry.format == file.format
        and not entry.unverified
    )


def boot_entry(file: WantedFile) -> BootFile:
    """The manifest entry of the boot file FILE."""
    return BootFile(kind=file.kind or "", size=file.size, sha256=file.sha256)


def boot_is_here(manifest: Manifest | None, file: WantedFile) -> bool:
    """True if MANIFEST lists the boot file FILE with the database's kind, size and hash."""
    return manifest is not None and manifest.boot_file(file.file_name) == boot_entry(file)


def written_here(manifest: Manifest | None) -> bool:
    """True if a file of MANIFEST is being written on this server."""
    if manifest is None:
        return False
    return any(not f.sealed or f.unverified for f in manifest.files)


def chain_entries(wanted: WantedVdisk) -> tuple[ManifestFile, ...]:
    """The manifest entries of WANTED's chain."""
    return tuple(
        ManifestFile(
            name=f.file_name,
            format=f.format,
            size=f.size,
            sha256=f.sha256,
            parent=f.parent_file,
            version=f.version,
        )
        for f in wanted.chain
    )


def plan_vdisk(wanted: WantedVdisk, manifest: Manifest | None) -> Fetch | Adopt | Waiting | None:
    """The next step for one vDisk of this server's stores, or None when
    its manifest already is the database's chain (or is written here)."""
    if not wanted.chain or written_here(manifest):
        return None
    for file in wanted.chain:
        if is_here(manifest, file):
            continue
        return _fetch_or_wait(wanted, file)
    entries = chain_entries(wanted)
    booted = {f.file_name for f in wanted.boot_files}
    kept = tuple(b for b in manifest.boot_files if b.name in booted) if manifest else ()
    if manifest is None or [_identity(f) for f in manifest.files] != [
        _identity(f) for f in entries
    ]:
        return Adopt(wanted.name, entries, wanted.virtual_size, kept)
    for file in wanted.boot_files:
        if not boot_is_here(manifest, file):
            return _fetch_or_wait(wanted, file)
    if kept != manifest.boot_files:
        return Adopt(wanted.name, entries, wanted.virtual_size, kept)
    return None


def _fetch_or_wait(wanted: WantedVdisk, file: WantedFile) -> Fetch | Waiting:
    if not wanted.peers_of(file):
        return Waiting(wanted, file, "no up server holds it verified")
    return Fetch(wanted, file)


def still_decided(
    adopts: Iterable[Adopt], before: Iterable[WantedVdisk], after: Iterable[WantedVdisk]
) -> list[Adopt]:
    """ADOPTS whose vDisk has the same chain and boot files in AFTER (the
    database read again) as in BEFORE (the read they were decided on)."""
    chain_before = {w.name: (w.chain, w.boot_files) for w in before}
    chain_after = {w.name: (w.chain, w.boot_files) for w in after}
    return [
        a
        for a in adopts
        if a.name in chain_after and chain_after[a.name] == chain_before.get(a.name)
    ]


def _identity(entry: ManifestFile) -> tuple[str, str, str | None]:
    """What makes two manifest entries the same file (an import writes no
    version number, the database has one: that is no difference)."""
    return (entry.name, entry.format, entry.sha256)


def plan(
    vdisks: Iterable[WantedVdisk],
    all_vdisk_names: frozenset[str],
    manifests: Mapping[str, Manifest | None],
    partials: Mapping[str, Iterable[str]],
) -> Plan:
    """One round's decisions. MANIFESTS: each vDisk directory of the store
    by name (None: no valid manifest); PARTIALS: vDisk name -> the partial
    copy names (`.repl-FILE`) in its directory."""
    fetches: list[Fetch] = []
    adopts: list[Adopt] = []
    waiting: list[Waiting] = []
    wanted_files: dict[str, set[str]] = {}
    for wanted in vdisks:
        wanted_files[wanted.name] = {f.file_name for f in (*wanted.chain, *wanted.boot_files)}
        step = plan_vdisk(wanted, manifests.get(wanted.name))
        if isinstance(step, Fetch):
            fetches.append(step)
        elif isinstance(step, Adopt):
            adopts.append(step)
        elif isinstance(step, Waiting):
            waiting.append(step)
    orphans = tuple(sorted(name for name in manifests if name not in all_vdisk_names))
    stale: list[tuple[str, str]] = []
    for name, names in partials.items():
        if name in orphans:
            continue
        keep = wanted_files.get(name)
        for partial in names:
            if keep is None and name in all_vdisk_names:
                continue  # a vDisk of a store this server is not in: leave it
            if partial[len(PARTIAL_PREFIX) :] not in (keep or set()):
                stale.append((name, partial))
    return Plan(
        fetches=tuple(fetches),
        adopts=tuple(adopts),
        waiting=tuple(waiting),
        orphans=orphans,
        remove_partials=tuple(sorted(stale)),
    )
