"""The manifest of one vDisk in a store: what files it has and their hashes.

Rules:
- Stored as `<store>/<vdisk>/manifest.json`, written atomically (temp file +
  fsync + os.replace), so a reader sees the old or the new one, never half.
- Only RELATIVE, plain file names (no '/', no '..', no leading '.'): nothing
  in a manifest depends on where the store sits, so a store can be at a
  different path on every server.
- Files are listed base first; a file's `parent` names an earlier file (or is
  null for the base). The last file is the top of the chain, the one served.
- Reading validates everything and raises ManifestError on any breach.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vdfarm.store.errors import InvalidName, ManifestError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FILE_FORMATS = ("raw", "qcow2")
VDISK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


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


@dataclass(frozen=True)
class ManifestFile:
    """One file of a vDisk: a relative name, its format, size and sha256."""

    name: str
    format: str
    size: int
    sha256: str
    parent: str | None = None


@dataclass(frozen=True)
class Manifest:
    """What a vDisk directory holds; `files[-1]` is the file to serve."""

    vdisk: str
    files: tuple[ManifestFile, ...]
    format_version: int = FORMAT_VERSION

    @property
    def top(self) -> ManifestFile:
        """The top of the chain: the file a device is served from."""
        return self.files[-1]

    @property
    def size(self) -> int:
        """The virtual size of the disk (the top file's size)."""
        return self.top.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "vdisk": self.vdisk,
            "files": [asdict(f) for f in self.files],
        }

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
        return cls(vdisk=vdisk, files=tuple(files))


def _file_from_dict(raw: Any, earlier_names: list[str]) -> ManifestFile:
    if not isinstance(raw, dict):
        raise ManifestError("manifest file entry is not an object")
    name, fmt, size = raw.get("name"), raw.get("format"), raw.get("size")
    sha256, parent = raw.get("sha256"), raw.get("parent")
    if not isinstance(name, str) or not _FILE_NAME_RE.fullmatch(name) or ".." in name:
        raise ManifestError(f"manifest file name {name!r} is not a plain relative name")
    if name == MANIFEST_NAME or name in earlier_names:
        raise ManifestError(f"manifest file name {name!r} is reserved or repeated")
    if fmt not in FILE_FORMATS:
        raise ManifestError(f"manifest file {name}: unsupported format {fmt!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"manifest file {name}: bad size {size!r}")
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise ManifestError(f"manifest file {name}: bad sha256 {sha256!r}")
    if earlier_names and parent != earlier_names[-1]:
        raise ManifestError(f"manifest file {name}: parent must be {earlier_names[-1]!r}")
    if not earlier_names and parent is not None:
        raise ManifestError(f"manifest file {name}: the base file has no parent")
    return ManifestFile(name=name, format=fmt, size=size, sha256=sha256, parent=parent)


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
