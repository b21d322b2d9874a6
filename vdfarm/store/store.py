"""The local store: a directory of vDisks, each a directory with its files.

Layout: `<root>/<vdisk>/base.raw` + `<root>/<vdisk>/manifest.json` (+ one
`v<N>.qcow2` per version above the base).

Rules:
- Atomic publish: an import is built in a hidden temporary directory inside
  the store (`.import-*`) and renamed into place only when its file, hash and
  manifest are complete; a delete renames the directory away (`.delete-*`)
  before removing it. A half-made or half-deleted vDisk is never visible.
- Entries whose name starts with '.' are never vDisks (scan ignores them),
  nor are directories without a manifest.
- Versions (qcow2 deltas, sealing, merging) live in `vdfarm.store.versions`.
- Sources are untrusted: `vdfarm.store.sources` opens them once, decides
  their format among raw, qcow2, vpc, vhdx and vmdk (given, or detected
  without qemu-img probing) and refuses any that names another file (backing
  file, external data file, vmdk extent) before a byte is copied; qemu-img
  reads them under resource limits.
- Whoever builds a temporary (`.import-*` directory, `.new-*` / `.merge-*`
  file) holds a shared flock on the directory it lives in (`busy`);
  `remove_leftovers` takes that flock exclusively without waiting and skips
  what is busy, so it removes only what a dead process left behind, even
  while another process of the same host imports.
- Nothing written here holds the store's own path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vdfarm.store import chunks, qemu_img, sources, uncached
from vdfarm.store.errors import (
    ManifestError,
    StoreError,
    VdiskExists,
    VdiskMissing,
)
from vdfarm.store.locking import _idle, busy
from vdfarm.store.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestFile,
    check_vdisk_name,
    fsync_dir,
    read_manifest,
    write_manifest,
)
from vdfarm.store.progress import Progress, fraction_to_bytes, shifted, silent

log = logging.getLogger(__name__)

SOURCE_FORMATS = sources.SOURCE_FORMATS
BASE_FILE = "base.raw"
HASH_CHUNK = 1024 * 1024
LEFTOVER_DIRS = (".import-", ".delete-")
LEFTOVER_FILES = (".new-", ".merge-")


def sha256_of(path: Path, progress: Progress = silent) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks that leave the page
    cache as they found it (`uncached.read_block`: hashing a store must not
    push the devices' hot blocks out); PROGRESS hears each block ("hash").
    Raises OSError."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        progress("hash", 0, size)
        while block := uncached.read_block(fd, offset, HASH_CHUNK):
            digest.update(block)
            offset += len(block)
            progress("hash", offset, max(size, offset))
    finally:
        os.close(fd)
    return digest.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking a vDisk's files against its manifest."""

    vdisk: str
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


class Store:
    """One server's local store of vDisks, rooted at `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def _dir_of(self, name: str) -> Path:
        return self.root / check_vdisk_name(name)

    def contains(self, name: str) -> bool:
        """True if a published vDisk NAME exists. Raises InvalidName."""
        return (self._dir_of(name) / "manifest.json").is_file()

    def manifest(self, name: str) -> Manifest:
        """The manifest of vDisk NAME.

        Raises InvalidName, VdiskMissing, ManifestError.
        """
        vdisk_dir = self._dir_of(name)
        if not vdisk_dir.is_dir():
            raise VdiskMissing(f"vDisk {name} is not in the store {self.root}")
        return read_manifest(vdisk_dir)

    def path_of(self, name: str) -> Path:
        """Absolute path of the top file of vDisk NAME's chain.

        Raises InvalidName, VdiskMissing, ManifestError.
        """
        return self._dir_of(name) / self.manifest(name).top.name

    def scan(self) -> list[Manifest]:
        """Manifests of every published vDisk, sorted by name.

        A directory without a manifest is not a vDisk (yet: a replica copy
        of a vDisk new here, or one whose base was quarantined) and is
        skipped; one with a broken manifest is skipped with a warning.
        Raises StoreError if the store root cannot be listed.
        """
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            raise StoreError(f"cannot list the store {self.root}: {exc.strerror}") from exc
        manifests = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not os.path.lexists(os.path.join(entry.path, MANIFEST_NAME)):
                continue
            try:
                manifests.append(read_manifest(Path(entry.path)))
            except ManifestError as exc:
                log.warning("skipping %s: %s", entry.path, exc)
        return manifests

    def verify(self, name: str, progress: Progress = silent) -> VerifyResult:
        """Check each file of vDisk NAME against its manifest (exists, size,
        sha256), its boot files too. PROGRESS hears the bytes hashed ("hash",
        out of the sizes the manifest gives the sealed files).

        Raises InvalidName, VdiskMissing, ManifestError.
        """
        manifest = self.manifest(name)
        entries = list(manifest.files) + [
            ManifestFile(name=b.name, format="raw", size=b.size, sha256=b.sha256)
            for b in manifest.boot_files
        ]
        total = sum(e.size or 0 for e in entries if e.sealed)
        problems, before = [], 0
        progress("hash", 0, total)
        for entry in entries:
            if p := self._check_file(name, entry, shifted(progress, before, total)):
                problems.append(p)
            before += (entry.size or 0) if entry.sealed else 0
        progress("hash", total, total)
        return VerifyResult(vdisk=name, problems=tuple(problems))

    def _check_file(
        self, name: str, entry: ManifestFile, progress: Progress = silent
    ) -> str | None:
        path = self._dir_of(name) / entry.name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{entry.name} is missing"
        if not entry.sealed:
            return None
        if entry.unverified:
            return (
                f"{entry.name} was written by its private device since it was hashed "
                f"(not re-hashed yet)"
            )
        if size != entry.size:
            return f"{entry.name} has size {size}, manifest says {entry.size}"
        if sha256_of(path, progress) != entry.sha256:
            return f"{entry.name} does not match its sha256"
        return None

    def import_image(
        self,
        name: str,
        source: Path,
        source_format: str | None = None,
        progress: Progress = silent,
    ) -> Manifest:
        """Import SOURCE as vDisk NAME, stored as raw. SOURCE_FORMAT is one of
        SOURCE_FORMATS, or None to detect it (among those only). PROGRESS
        hears the conversion ("copy") and the hash ("hash"), in bytes of the
        disk.

        Every check runs before a byte is copied; the vDisk appears in the
        store only once it is complete.
        Raises InvalidName, VdiskExists, UnsupportedImage (unknown format,
        not a disk, names another file, changed during the import),
        QemuImgError (unreadable, or stopped by its limits), StoreError
        (store root missing, disk full...).
        """
        final = self._dir_of(name)
        if final.exists():
            raise VdiskExists(f"vDisk {name} already exists in the store")
        pinned = sources.open_source(Path(source))
        try:
            image = sources.inspect(pinned, source_format)
            temp = self._make_temp_dir(".import", name)
            try:
                with busy(temp):
                    manifest = self._build(temp, name, pinned, image, progress)
                    pinned.check_unchanged()
                    self._publish(temp, final, name)
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)
                raise
        finally:
            pinned.close()
        return manifest

    def _make_temp_dir(self, prefix: str, name: str) -> Path:
        temp = self.root / f"{prefix}-{name}-{uuid.uuid4().hex[:12]}"
        try:
            temp.mkdir()
        except FileNotFoundError as exc:
            raise StoreError(f"the store directory {self.root} does not exist") from exc
        except OSError as exc:
            raise StoreError(f"cannot write to the store {self.root}: {exc.strerror}") from exc
        return temp

    def _build(
        self,
        temp: Path,
        name: str,
        pinned: sources.PinnedSource,
        image: sources.SourceImage,
        progress: Progress,
    ) -> Manifest:
        target = temp / BASE_FILE
        progress("copy", 0, image.virtual_size)
        qemu_img.convert(
            pinned.fd_path,
            target,
            src_format=image.format,
            dst_format="raw",
            limits=qemu_img.convert_limits(image.virtual_size),
            pass_fds=(pinned.fd,),
            on_fraction=fraction_to_bytes(progress, "copy", image.virtual_size),
        )
        try:
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
            entry = ManifestFile(
                name=BASE_FILE,
                format="raw",
                size=target.stat().st_size,
                sha256=chunks.chunk_list(
                    target, progress=progress
                ).sha256,  # one pass: the peers' chunk list too
                parent=None,
            )
            manifest = Manifest(vdisk=name, files=(entry,))
            write_manifest(temp, manifest)
        except OSError as exc:
            raise StoreError(f"cannot write vDisk {name} into the store: {exc.strerror}") from exc
        return manifest

    def _publish(self, temp: Path, final: Path, name: str) -> None:
        try:
            os.rename(temp, final)
        except OSError as exc:
            if final.exists():
                raise VdiskExists(f"vDisk {name} already exists in the store") from exc
            raise StoreError(f"cannot publish vDisk {name}: {exc.strerror}") from exc
        fsync_dir(self.root)

    def delete(self, name: str) -> None:
        """Remove vDisk NAME from the store (hidden first, then removed).

        Raises InvalidName, VdiskMissing, StoreError.
        """
        vdisk_dir = self._dir_of(name)
        if not vdisk_dir.is_dir():
            raise VdiskMissing(f"vDisk {name} is not in the store {self.root}")
        doomed = self.root / f".delete-{name}-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(vdisk_dir, doomed)
        except OSError as exc:
            raise StoreError(f"cannot delete vDisk {name}: {exc.strerror}") from exc
        fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)

    def remove_leftovers(self) -> list[str]:
        """Remove what a crashed process left: `.import-*` / `.delete-*`
        directories in the store and `.new-*` / `.merge-*` files in vDisk
        directories, skipping any a live process is still building (`busy`);
        return their names (relative to the store). Meant for server start,
        safe at any time.

        Raises StoreError if the store root cannot be listed.
        """
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            raise StoreError(f"cannot list the store {self.root}: {exc.strerror}") from exc
        removed = []
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name.startswith(LEFTOVER_DIRS):
                if self._remove_idle_dir(entry.path):
                    removed.append(entry.name)
            elif not entry.name.startswith("."):
                removed += [f"{entry.name}/{n}" for n in self._remove_temp_files(entry.path)]
        if removed:
            log.info("removed leftovers of a crash from the store: %s", ", ".join(removed))
        return removed

    @staticmethod
    def _remove_idle_dir(path: str) -> bool:
        fd = _idle(path)
        if fd is None:
            return False
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("cannot remove the leftover %s: %s", path, exc)
            return False
        finally:
            os.close(fd)
        return True

    @staticmethod
    def _remove_temp_files(vdisk_dir: str) -> list[str]:
        fd = _idle(vdisk_dir)
        if fd is None:
            return []
        removed = []
        try:
            for entry in os.scandir(vdisk_dir):
                if entry.name.startswith(LEFTOVER_FILES) and not entry.is_dir(
                    follow_symlinks=False
                ):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        except OSError as exc:
            log.warning("cannot remove leftovers in %s: %s", vdisk_dir, exc)
        finally:
            os.close(fd)
        return sorted(removed)
