"""The local store: a directory of vDisks, each a directory with its files.

Layout: `<root>/<vdisk>/base.raw` + `<root>/<vdisk>/manifest.json` (+ one
`v<N>.qcow2` per version above the base).

Rules:
- Atomic publish: an import is built in a hidden temporary directory inside
  the store (`.import-*`) and renamed into place only when its file, hash and
  manifest are complete; a delete renames the directory away (`.delete-*`)
  before removing it. A half-made or half-deleted vDisk is never visible.
- Entries whose name starts with '.' are never vDisks (scan ignores them).
- Versions (qcow2 deltas, sealing, merging) live in `vdfarm.store.versions`.
- Sources are read with qemu-img: raw, qcow2, vpc, vhdx and vmdk only, and
  never with a backing file (a vDisk is self-contained).
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

from vdfarm.store import qemu_img
from vdfarm.store.errors import (
    ManifestError,
    StoreError,
    UnsupportedImage,
    VdiskExists,
    VdiskMissing,
)
from vdfarm.store.manifest import (
    Manifest,
    ManifestFile,
    check_vdisk_name,
    fsync_dir,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

SOURCE_FORMATS = ("raw", "qcow2", "vpc", "vhdx", "vmdk")
BASE_FILE = "base.raw"
HASH_CHUNK = 1024 * 1024
SECTOR = 512


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks. Raises OSError."""
    digest = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
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

        Directories with a broken manifest are skipped with a warning.
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
            try:
                manifests.append(read_manifest(Path(entry.path)))
            except ManifestError as exc:
                log.warning("skipping %s: %s", entry.path, exc)
        return manifests

    def verify(self, name: str) -> VerifyResult:
        """Check each file of vDisk NAME against its manifest (exists, size, sha256).

        Raises InvalidName, VdiskMissing, ManifestError.
        """
        manifest = self.manifest(name)
        problems = [p for f in manifest.files if (p := self._check_file(name, f))]
        return VerifyResult(vdisk=name, problems=tuple(problems))

    def _check_file(self, name: str, entry: ManifestFile) -> str | None:
        path = self._dir_of(name) / entry.name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{entry.name} is missing"
        if not entry.sealed:
            return None
        if size != entry.size:
            return f"{entry.name} has size {size}, manifest says {entry.size}"
        if sha256_of(path) != entry.sha256:
            return f"{entry.name} does not match its sha256"
        return None

    def import_image(self, name: str, source: Path) -> Manifest:
        """Import SOURCE (raw/qcow2/vpc/vhdx/vmdk) as vDisk NAME, stored as raw.

        The vDisk appears in the store only once it is complete.
        Raises InvalidName, VdiskExists, UnsupportedImage, QemuImgError,
        StoreError (store root missing, disk full...).
        """
        final = self._dir_of(name)
        if final.exists():
            raise VdiskExists(f"vDisk {name} already exists in the store")
        source_format = probe_source(Path(source))
        temp = self._make_temp_dir(".import", name)
        try:
            manifest = self._build(temp, name, Path(source), source_format)
            self._publish(temp, final, name)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
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

    def _build(self, temp: Path, name: str, source: Path, source_format: str) -> Manifest:
        target = temp / BASE_FILE
        qemu_img.convert(source, target, src_format=source_format, dst_format="raw")
        try:
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
            entry = ManifestFile(
                name=BASE_FILE,
                format="raw",
                size=target.stat().st_size,
                sha256=sha256_of(target),
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
        """Remove `.import-*` / `.delete-*` directories and the `.new-*` /
        `.merge-*` temp files inside vDisks, left by a crash; return their names."""
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith((".import-", ".delete-")) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
            elif not entry.name.startswith(".") and entry.is_dir():
                for temp in entry.glob(".*-*"):
                    if temp.name.startswith((".new-", ".merge-")) and temp.is_file():
                        temp.unlink(missing_ok=True)
                        removed.append(f"{entry.name}/{temp.name}")
        return removed


def probe_source(source: Path) -> str:
    """The qemu-img format of SOURCE if the store accepts it.

    Raises UnsupportedImage (not a file, empty, unsupported format, raw file
    not a whole number of sectors, backing file) or
    QemuImgError (qemu-img cannot read it).
    """
    if not source.is_file():
        raise UnsupportedImage(f"source {source} is not a readable file")
    info = qemu_img.info(source)
    fmt = info.get("format")
    if fmt not in SOURCE_FORMATS:
        raise UnsupportedImage(
            f"source {source} has unsupported format {fmt!r} "
            f"(supported: {', '.join(SOURCE_FORMATS)})"
        )
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise UnsupportedImage(f"source {source} is empty")
    if fmt == "raw" and source.stat().st_size % SECTOR:
        raise UnsupportedImage(
            f"source {source} is not a disk image: its size is not a multiple of {SECTOR} bytes"
        )
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise UnsupportedImage(
            f"source {source} has a backing file ({backing}); "
            "flatten it first with 'qemu-img convert'"
        )
    return fmt
