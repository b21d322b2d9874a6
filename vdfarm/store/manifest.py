"""The manifest of one vDisk in a store: what files it has and their hashes.

Rules:
- Stored as `<store>/<vdisk>/manifest.json`, written atomically (temp file +
  fsync + os.replace), so a reader sees the old or the new one, never half.
- Only RELATIVE, plain file names (no '/', no '..', no leading '.'): nothing
  in a manifest depends on where the store sits, so a store can be at a
  different path on every server.
- Files are listed base first; a file's `parent` names an earlier file (or is
  null for the base). The last file is the top of the chain.
- Only the top file above the base may be unsealed (open for maintenance): its `sha256` and
  `size` are null until it is sealed. `version` is the file's vDisk version
  number (absent in manifests written before versions existed).
- `retired` lists files that left the chain (merged away) but stay on disk
  while a connected device may still read them; they are never served anew.
- Optional keys (`version`, `retired`, `virtual_size`, `unverified`,
  `boot_files`) are written only when set, so a manifest without versions
  reads and writes as before.
- `boot_files` lists the kernels and initramfs images the vDisk's versions
  boot over the network (`vdfarm.store.boot_files`): each by kind, size and
  sha256, stored under the name `<kind>-<sha256>` (so versions booting the
  same file share it); a name is never both a chain file and a boot file.
- `unverified` marks a sealed file a private-mode device has written since
  it was hashed: its `sha256` is the last one known, not the file's; the
  copy counts as held again only once re-hashed (`versions.rehash`).
- Reading validates everything and raises ManifestError on any breach.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vdfarm.store.errors import InvalidName, ManifestError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FILE_FORMATS = ("raw", "qcow2")
VDISK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
BOOT_KINDS = ("kernel", "initrd")


def check_vdisk_name(name: str) -> str:
    """Return NAME if it is a valid vDisk name.

    Raises InvalidName (letters, digits, '.', '_', '-'; 1-64 chars; starting
    with a letter or digit).
    """
    if not isinstance(name, str) or not VDISK_NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid vDisk name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_file_name(name: str) -> str:
    """Return NAME if it is a plain file name a manifest may hold.

    Raises InvalidName (letters, digits, '.', '_', '-'; 1-128 chars; starting
    with a letter or digit; no '..'; not the manifest's own name).
    """
    if (
        not isinstance(name, str)
        or not _FILE_NAME_RE.fullmatch(name)
        or ".." in name
        or name == MANIFEST_NAME
    ):
        raise InvalidName(
            f"invalid file name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ManifestFile:
    """One file of a vDisk: a relative name, its format, size and sha256
    (size and sha256 are None while the file is unsealed)."""

    name: str
    format: str
    size: int | None
    sha256: str | None
    parent: str | None = None
    version: int | None = None
    unverified: bool = False

    @property
    def sealed(self) -> bool:
        """True once the file's sha256 is recorded (it never changes again)."""
        return self.sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "format": self.format,
            "size": self.size,
            "sha256": self.sha256,
            "parent": self.parent,
        }
        if self.version is not None:
            data["version"] = self.version
        if self.unverified:
            data["unverified"] = True
        return data


def boot_file_name(kind: str, sha256: str) -> str:
    """The store name of the boot file of KIND with content SHA256."""
    return f"{kind}-{sha256}"


@dataclass(frozen=True)
class BootFile:
    """A boot file of a vDisk (a kernel or an initramfs), named by its kind
    and content (`boot_file_name`)."""

    kind: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return boot_file_name(self.kind, self.sha256)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class RetiredFile:
    """A file merged out of the chain, kept on disk until no device reads it."""

    name: str
    version: int | None
    retired_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "retired_at": self.retired_at.isoformat(),
        }


@dataclass(frozen=True)
class Manifest:
    """What a vDisk directory holds; `files[-1]` is the top of the chain."""

    vdisk: str
    files: tuple[ManifestFile, ...]
    format_version: int = FORMAT_VERSION
    retired: tuple[RetiredFile, ...] = ()
    virtual_size: int | None = None
    boot_files: tuple[BootFile, ...] = ()

    @property
    def top(self) -> ManifestFile:
        """The top of the chain (the newest version's file)."""
        return self.files[-1]

    @property
    def size(self) -> int:
        """The virtual size of the disk (`virtual_size`, else the raw base's size)."""
        if self.virtual_size is not None:
            return self.virtual_size
        return self.files[0].size or 0

    def file(self, name: str) -> ManifestFile | None:
        """The chain's file called NAME, or None."""
        return next((f for f in self.files if f.name == name), None)

    def boot_file(self, name: str) -> BootFile | None:
        """The boot file called NAME, or None."""
        return next((b for b in self.boot_files if b.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": self.format_version,
            "vdisk": self.vdisk,
            "files": [f.to_dict() for f in self.files],
        }
        if self.retired:
            data["retired"] = [r.to_dict() for r in self.retired]
        if self.virtual_size is not None:
            data["virtual_size"] = self.virtual_size
        if self.boot_files:
            data["boot_files"] = [b.to_dict() for b in self.boot_files]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build and validate a manifest. Raises ManifestError."""
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"unsupported manifest format_version {data.get('format_version')!r}"
            )
        vdisk = data.get("vdisk")
        if not isinstance(vdisk, str):
            raise ManifestError(f"manifest: bad vdisk name {vdisk!r}")
        try:
            check_vdisk_name(vdisk)
        except InvalidName as exc:
            raise ManifestError(f"manifest: {exc}") from exc
        raw_files = data.get("files")
        if not isinstance(raw_files, list) or not raw_files:
            raise ManifestError("manifest lists no files")
        files: list[ManifestFile] = []
        for raw in raw_files:
            files.append(_file_from_dict(raw, [f.name for f in files]))
        unsealed = [f.name for f in files if not f.sealed]
        if unsealed and (unsealed != [files[-1].name] or len(files) == 1):
            raise ManifestError(
                f"manifest file {unsealed[0]}: only a top file above the base may be unsealed"
            )
        retired = _retired_from_list(data.get("retired", []), [f.name for f in files])
        virtual_size = data.get("virtual_size")
        if virtual_size is not None and not _is_count(virtual_size):
            raise ManifestError(f"manifest: bad virtual_size {virtual_size!r}")
        boot_files = _boot_files_from_list(
            data.get("boot_files", []), [f.name for f in files] + [r.name for r in retired]
        )
        return cls(
            vdisk=vdisk,
            files=tuple(files),
            retired=retired,
            virtual_size=virtual_size,
            boot_files=boot_files,
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_plain_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _FILE_NAME_RE.fullmatch(name) or ".." in name:
        raise ManifestError(f"manifest {what} name {name!r} is not a plain relative name")
    return name


def _file_from_dict(raw: Any, earlier_names: list[str]) -> ManifestFile:
    if not isinstance(raw, dict):
        raise ManifestError("manifest file entry is not an object")
    name = _check_plain_name(raw.get("name"), "file")
    fmt, size, sha256 = raw.get("format"), raw.get("size"), raw.get("sha256")
    parent, version = raw.get("parent"), raw.get("version")
    if name == MANIFEST_NAME or name in earlier_names:
        raise ManifestError(f"manifest file name {name!r} is reserved or repeated")
    if fmt not in FILE_FORMATS:
        raise ManifestError(f"manifest file {name}: unsupported format {fmt!r}")
    if sha256 is None and size is None:
        pass  # an unsealed file (allowed on top only: checked by the caller)
    elif not _is_count(size):
        raise ManifestError(f"manifest file {name}: bad size {size!r}")
    elif not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise ManifestError(f"manifest file {name}: bad sha256 {sha256!r}")
    if version is not None and not _is_count(version):
        raise ManifestError(f"manifest file {name}: bad version {version!r}")
    unverified = raw.get("unverified", False)
    if unverified not in (True, False) or (unverified and sha256 is None):
        raise ManifestError(f"manifest file {name}: bad unverified {unverified!r}")
    if earlier_names and parent != earlier_names[-1]:
        raise ManifestError(f"manifest file {name}: parent must be {earlier_names[-1]!r}")
    if not earlier_names and parent is not None:
        raise ManifestError(f"manifest file {name}: the base file has no parent")
    return ManifestFile(
        name=name,
        format=fmt,
        size=size,
        sha256=sha256,
        parent=parent,
        version=version,
        unverified=bool(unverified),
    )


def _retired_from_list(raw: Any, chain_names: list[str]) -> tuple[RetiredFile, ...]:
    if not isinstance(raw, list):
        raise ManifestError("manifest: retired is not a list")
    retired: list[RetiredFile] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ManifestError("manifest retired entry is not an object")
        name = _check_plain_name(item.get("name"), "retired file")
        if name == MANIFEST_NAME or name in chain_names or name in [r.name for r in retired]:
            raise ManifestError(f"manifest retired file {name!r} is reserved or repeated")
        version = item.get("version")
        if version is not None and not _is_count(version):
            raise ManifestError(f"manifest retired file {name}: bad version {version!r}")
        try:
            at = datetime.fromisoformat(str(item["retired_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest retired file {name}: bad retired_at") from exc
        if at.tzinfo is None:
            raise ManifestError(f"manifest retired file {name}: retired_at has no zone")
        retired.append(RetiredFile(name=name, version=version, retired_at=at))
    return tuple(retired)


def _boot_files_from_list(raw: Any, taken: list[str]) -> tuple[BootFile, ...]:
    if not isinstance(raw, list):
        raise ManifestError("manifest: boot_files is not a list")
    found: list[BootFile] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ManifestError("manifest boot file entry is not an object")
        kind, size, sha256 = item.get("kind"), item.get("size"), item.get("sha256")
        if kind not in BOOT_KINDS:
            raise ManifestError(f"manifest boot file: unknown kind {kind!r}")
        if not _is_count(size) or not size:
            raise ManifestError(f"manifest boot file: bad size {size!r}")
        if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
            raise ManifestError(f"manifest boot file: bad sha256 {sha256!r}")
        entry = BootFile(kind=kind, size=int(size), sha256=sha256)
        if item.get("name", entry.name) != entry.name:
            raise ManifestError(
                f"manifest boot file {item.get('name')!r} is not named {entry.name}"
            )
        if entry.name in taken or entry.name in [f.name for f in found]:
            raise ManifestError(f"manifest boot file {entry.name} is repeated")
        found.append(entry)
    return tuple(found)


def read_manifest(vdisk_dir: Path) -> Manifest:
    """Read and validate `VDISK_DIR/manifest.json`. Raises ManifestError."""
    path = vdisk_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ManifestError(f"{path} does not exist") from exc
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc.msg}") from exc
    return Manifest.from_dict(data)


def write_manifest(vdisk_dir: Path, manifest: Manifest) -> None:
    """Write `VDISK_DIR/manifest.json` atomically (temp + fsync + os.replace).

    Raises OSError if the directory cannot be written.
    """
    final = vdisk_dir / MANIFEST_NAME
    temp = vdisk_dir / f".{MANIFEST_NAME}.tmp"
    data = json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"
    with open(temp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, final)
    fsync_dir(vdisk_dir)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
