"""The sending side of replication: which version files this server may give
its peers, and their chunk lists.

Rules:
- A file is given only if it is held verified here: the farm database has
  a sealed version with that file name (its sha256 and size set), and this
  store's manifest lists the file sealed, not `unverified`, with that very
  sha256, size and format, and it is on disk, a regular file of that size.
  Anything else is NotFound ("not held verified here"), whatever the reason,
  so a peer learns nothing more about the store. A boot file
  (`<kind>-<sha256>`) is given when some version of the vDisk boots it
  and this store's manifest lists it with that size, on disk.
- Names are plain names (`check_vdisk_name`, `check_file_name`): Invalid
  otherwise, before the database or the store is looked at.
- `chunk_list` may hash gigabytes (the first time; then it is cached beside
  the file): call it from a worker thread, never inside a transaction (it
  opens none while it hashes). The hashing runs in a thread of its own,
  one per file however many peers ask, at the copies' lower CPU priority
  (`copy_priority`); a caller waits up to `wait_s` for
  it, then gets Unavailable ("ask again"), so a peer is never kept without
  a byte for longer than its read timeout while the hashing goes on and
  fills the cache. A list whose whole sha256 is not the database's (the
  file changed behind vdfarm's back) is NotFound.
"""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from vdfarm.farm.models import Vdisk, VdiskVersion
from vdfarm.service.boot_records import boot_files_of
from vdfarm.service.deps import SessionFactory
from vdfarm.service.errors import Invalid, NotFound, Unavailable
from vdfarm.store.boot_files import held_boot_file
from vdfarm.store.chunks import ChunkList, chunk_list
from vdfarm.store.copy_priority import lower_this_thread
from vdfarm.store.errors import InvalidName, StoreError
from vdfarm.store.manifest import BootFile, check_file_name, check_vdisk_name
from vdfarm.store.store import Store

CHUNK_LIST_WAIT_S = 5.0


@dataclass(frozen=True)
class HeldFile:
    """A version file this server holds verified, as the database sealed it."""

    vdisk: str
    file_name: str
    path: Path
    size: int
    sha256: str


class ReplicaSourceService:
    """Version files this server gives its peers."""

    def __init__(
        self, session: SessionFactory, store: Store, wait_s: float = CHUNK_LIST_WAIT_S
    ) -> None:
        self.session = session
        self.store = store
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._hashing: dict[Path, Future[ChunkList]] = {}

    def held_file(self, vdisk: str, file_name: str) -> HeldFile:
        """FILE_NAME of vDisk VDISK if this server holds it verified.

        Raises Invalid (not plain names), NotFound, Unavailable (database).
        """
        try:
            check_vdisk_name(vdisk)
            check_file_name(file_name)
        except InvalidName as exc:
            raise Invalid(str(exc)) from exc
        not_here = NotFound(f"this server does not hold {file_name} of vDisk {vdisk} verified")
        boot: BootFile | None = None
        with self.session() as session:
            row = session.execute(
                select(VdiskVersion.size, VdiskVersion.sha256, VdiskVersion.format)
                .join(Vdisk, Vdisk.id == VdiskVersion.vdisk_id)
                .where(Vdisk.name == vdisk, VdiskVersion.file_name == file_name)
            ).first()
            if row is None:
                vdisk_id = session.scalar(select(Vdisk.id).where(Vdisk.name == vdisk))
                boot = boot_files_of(session, vdisk_id).get(file_name) if vdisk_id else None
        if row is None:
            return self._held_boot_file(vdisk, file_name, boot, not_here)
        if row.sha256 is None or row.size is None:
            raise not_here
        try:
            entry = self.store.manifest(vdisk).file(file_name)
        except StoreError as exc:
            raise not_here from exc
        if (
            entry is None
            or entry.unverified
            or (entry.sha256, entry.size, entry.format) != (row.sha256, row.size, row.format)
        ):
            raise not_here
        path = self.store.root / vdisk / file_name
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise not_here from exc
        if not stat.S_ISREG(st.st_mode) or st.st_size != row.size:
            raise not_here
        return HeldFile(
            vdisk=vdisk, file_name=file_name, path=path, size=row.size, sha256=row.sha256
        )

    def _held_boot_file(
        self, vdisk: str, file_name: str, boot: BootFile | None, not_here: NotFound
    ) -> HeldFile:
        """FILE_NAME of VDISK as a boot file some version boots (BOOT, from
        the database), if this store holds it. Raises NOT_HERE."""
        if boot is None:
            raise not_here
        try:
            path = held_boot_file(self.store, vdisk, file_name)
            listed = self.store.manifest(vdisk).boot_file(file_name)
        except StoreError as exc:
            raise not_here from exc
        if listed != boot:
            raise not_here
        return HeldFile(
            vdisk=vdisk, file_name=file_name, path=path, size=boot.size, sha256=boot.sha256
        )

    def chunk_list(self, vdisk: str, file_name: str) -> ChunkList:
        """The chunk list of FILE_NAME of vDisk VDISK, held verified here
        (slow the first time: hashes the file).

        Raises Invalid, NotFound (not held, or the file no longer matches
        the database), Unavailable (still hashing after `wait_s`; database).
        """
        held = self.held_file(vdisk, file_name)
        future = self._hash(held.path)
        try:
            found = future.result(timeout=self.wait_s)
        except TimeoutError as exc:
            raise Unavailable(
                f"this server is computing the chunk list of {file_name} of vDisk {vdisk}; "
                "ask again in a moment"
            ) from exc
        except StoreError as exc:
            raise NotFound(f"this server cannot read {file_name} of vDisk {vdisk}: {exc}") from exc
        if found.sha256 != held.sha256 or found.size != held.size:
            raise NotFound(
                f"this server's copy of {file_name} of vDisk {vdisk} does not match "
                "the farm database"
            )
        return found

    def _hash(self, path: Path) -> Future[ChunkList]:
        """The chunk list of PATH being computed (by a thread of its own,
        shared by every caller until it is done)."""
        with self._lock:
            future = self._hashing.get(path)
            if future is not None:
                return future
            future = Future()
            self._hashing[path] = future
        threading.Thread(
            target=self._run_hash, args=(path, future), name=f"chunks-{path.name}", daemon=True
        ).start()
        return future

    def _run_hash(self, path: Path, future: Future[ChunkList]) -> None:
        lower_this_thread()  # a copy's work: the devices' I/O comes first
        try:
            future.set_result(chunk_list(path))
        except BaseException as exc:  # handed to every caller waiting
            future.set_exception(exc)
        finally:
            with self._lock:
                self._hashing.pop(path, None)
