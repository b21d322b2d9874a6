"""The chunk list of a sealed store file: its size, its sha256 and the sha256
of every CHUNK_SIZE piece, the map a receiver checks a replica copy against.

Rules:
- A chunk list is computed in one pass over the file (every chunk's hash and
  the whole file's), reading through `uncached.read_block`, so listing a
  file does not evict the devices' hot pages. The same pass notes, per
  chunk, the sha256 of the file from its start to the chunk's end
  (`prefixes`: a receiver taking the chunks in order checks each one and
  the whole file with one hash), and which chunks hold a frame worth
  packing on the wire (`packable`, `wire_frames.looks_packable`). Both are
  optional in a list from a peer (an older vdfarm sends neither).
- It is cached beside the file in `.chunks-<file>.json` (a dot-name: never a
  vDisk, never served), keyed by the file's (size, mtime_ns, inode); a key
  that differs, or a cache that cannot be read or does not parse, means
  "compute again". The cache is written under a `.new-` temporary while the
  directory is `busy`, then renamed over the old one; a cache that cannot be
  written costs the next caller a re-hash, nothing else. A cache of an
  older form (CACHE_FORM: without prefixes) is computed again.
- Files are opened O_NOFOLLOW: a link planted in a vDisk directory is not
  read.
- A chunk list that comes from a peer is untrusted: `ChunkList.from_dict`
  checks every field, the count of chunks against the size, and caps the
  chunk size and the number of chunks (MAX_CHUNKS), raising BadChunkList;
  its last prefix must be its sha256.
- `read_range` reads a range for a peer in large blocks (SEND_BLOCK) with
  the kernel's readahead off (`uncached.no_readahead`) and its own on:
  while a block is read, the next one is already asked of the disk (its
  cache looked at first), so pages read for the copy leave the cache
  again and the disk never waits for us.
- The sha256 of an all-zero chunk is known without reading it (`zero_hash`),
  so a receiver may leave holes instead of fetching zeroes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from vdfarm.store.errors import BadChunkList, StoreError
from vdfarm.store.locking import busy
from vdfarm.store.manifest import fsync_dir
from vdfarm.store.progress import Progress, silent
from vdfarm.store.uncached import cached_prefix, no_readahead, prefetch, read_block
from vdfarm.store.wire_frames import has_packable_frame

CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_CHUNKS = 1 << 19  # 2 TiB of 4 MiB chunks; a peer cannot make us hold more hashes
READ_BLOCK = 1024 * 1024
SEND_BLOCK = 4 * 1024 * 1024
CACHE_FORM = 2
CACHE_PREFIX = ".chunks-"
CACHE_SUFFIX = ".json"
MAX_CACHE_BYTES = MAX_CHUNKS * 152 + 4096  # a hash and a prefix hash per chunk, an index
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_sha256(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks of CHUNK_SIZE a file of SIZE bytes has (the last may be short)."""
    return -(-size // chunk_size)


@functools.lru_cache(maxsize=8)
def zero_hash(length: int) -> str:
    """The sha256 of LENGTH zero bytes."""
    return hashlib.sha256(bytes(length)).hexdigest()


@dataclass(frozen=True)
class ChunkList:
    """A file's size, sha256, chunk size and the sha256 of each chunk in order;
    PREFIXES (or None) the sha256 of the file up to the end of each chunk,
    PACKABLE the indices of the chunks with a frame worth packing."""

    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]
    prefixes: tuple[str, ...] | None = None
    packable: tuple[int, ...] = ()

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk INDEX. Raises IndexError."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk {index} out of range")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def is_zero(self, index: int) -> bool:
        """True if chunk INDEX is all zero bytes (by its hash)."""
        return self.chunks[index] == zero_hash(self.span(index)[1])

    def is_packable(self, index: int) -> bool:
        """True if chunk INDEX holds a frame worth packing on the wire."""
        return index in self._packable_set

    @functools.cached_property
    def _packable_set(self) -> frozenset[int]:
        return frozenset(self.packable)

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
        }
        if self.prefixes is not None:
            found["prefixes"] = list(self.prefixes)
            found["packable"] = list(self.packable)
        return found

    @classmethod
    def from_dict(cls, data: Any) -> ChunkList:
        """Build and check a chunk list (from a peer: untrusted).

        Raises BadChunkList.
        """
        if not isinstance(data, dict):
            raise BadChunkList("the chunk list is not a JSON object")
        size, sha256 = data.get("size"), data.get("sha256")
        chunk_size, chunks = data.get("chunk_size"), data.get("chunks")
        if not _is_count(size):
            raise BadChunkList(f"bad size {size!r} in the chunk list")
        if not _is_sha256(sha256):
            raise BadChunkList("bad sha256 in the chunk list")
        if not _is_count(chunk_size) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BadChunkList(
                f"bad chunk size {chunk_size!r} in the chunk list "
                f"(allowed {MIN_CHUNK_SIZE}-{MAX_CHUNK_SIZE} bytes)"
            )
        expected = chunk_count(size, chunk_size)
        if expected > MAX_CHUNKS:
            raise BadChunkList(f"the file is too large for a chunk list ({expected} chunks)")
        if not isinstance(chunks, list) or len(chunks) != expected:
            raise BadChunkList(f"the chunk list should hold {expected} chunk hashes")
        if not all(_is_sha256(c) for c in chunks):
            raise BadChunkList("a chunk hash in the chunk list is not a sha256")
        prefixes, packable = data.get("prefixes"), data.get("packable", [])
        if prefixes is not None:
            if not isinstance(prefixes, list) or len(prefixes) != expected:
                raise BadChunkList(f"the chunk list should hold {expected} prefix hashes")
            if not all(_is_sha256(p) for p in prefixes):
                raise BadChunkList("a prefix hash in the chunk list is not a sha256")
            if prefixes and prefixes[-1] != sha256:
                raise BadChunkList("the chunk list's last prefix hash is not its sha256")
        if (
            not isinstance(packable, list)
            or not all(_is_count(i) and i < expected for i in packable)
            or any(a >= b for a, b in zip(packable, packable[1:], strict=False))
        ):
            raise BadChunkList("the packable chunks of the chunk list are not ascending indices")
        return cls(
            size=size,
            sha256=sha256,
            chunk_size=chunk_size,
            chunks=tuple(chunks),
            prefixes=None if prefixes is None else tuple(prefixes),
            packable=tuple(packable),
        )


def cache_path(path: Path) -> Path:
    """Where the chunk list of the file at PATH is cached."""
    return path.with_name(f"{CACHE_PREFIX}{path.name}{CACHE_SUFFIX}")


def _open_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot read {path.name}: {exc.strerror}") from exc


def _key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def chunk_list(path: Path, chunk_size: int = CHUNK_SIZE, progress: Progress = silent) -> ChunkList:
    """The chunk list of the file at PATH: from its cache if the cache's key
    is the file's, else computed (one pass, uncached reads; PROGRESS hears
    the bytes hashed, "hash") and cached.

    Raises StoreError (missing, a link, not a regular file, unreadable).
    """
    fd = _open_file(path)
    try:
        before = os.fstat(fd)
        if not _is_regular(before):
            raise StoreError(f"{path.name} is not a regular file")
        key = _key(before)
        cached = _read_cache(path, key, chunk_size)
        if cached is not None:
            progress("hash", before.st_size, before.st_size)
            return cached
        found = _compute(fd, before.st_size, chunk_size, progress)
        if _key(os.fstat(fd)) == key:  # not changed while it was read
            _write_cache(path, key, found)
        return found
    except OSError as exc:
        raise StoreError(f"cannot read {path.name}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _compute(fd: int, size: int, chunk_size: int, progress: Progress = silent) -> ChunkList:
    whole = hashlib.sha256()
    chunks: list[str] = []
    prefixes: list[str] = []
    packable: list[int] = []
    scratch = bytearray()
    offset = 0
    progress("hash", 0, size)
    while offset < size:
        piece = hashlib.sha256()
        packs = False
        begin, end = offset, min(offset + chunk_size, size)
        while offset < end:
            block = read_block(fd, offset, min(READ_BLOCK, end - offset), scratch)
            if not block:
                raise StoreError("the file shrank while it was hashed")
            whole.update(block)
            piece.update(block)
            packs = packs or has_packable_frame(block)
            offset += len(block)
        progress("hash", offset, size)
        chunks.append(piece.hexdigest())
        prefixes.append(whole.hexdigest())
        if packs and chunks[-1] != zero_hash(end - begin):
            packable.append(len(chunks) - 1)
    return ChunkList(
        size=size,
        sha256=whole.hexdigest(),
        chunk_size=chunk_size,
        chunks=tuple(chunks),
        prefixes=tuple(prefixes),
        packable=tuple(packable),
    )


def _read_cache(path: Path, key: dict[str, int], chunk_size: int) -> ChunkList | None:
    try:
        fd = os.open(cache_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_CACHE_BYTES + 1)
        if len(raw) > MAX_CACHE_BYTES:
            return None
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        if data.get("form") != CACHE_FORM:
            return None
        found = ChunkList.from_dict(data.get("chunks"))
    except (OSError, ValueError, BadChunkList):
        return None
    if found.size != key["size"] or found.chunk_size != chunk_size or found.prefixes is None:
        return None
    return found


def _write_cache(path: Path, key: dict[str, int], found: ChunkList) -> None:
    """Best effort: a cache that cannot be written (the directory held
    exclusively, by a merge of this very process) is computed again next time."""
    final = cache_path(path)
    temp = path.with_name(f".new-{uuid.uuid4().hex[:12]}{final.name}")
    text = json.dumps(
        {"form": CACHE_FORM, "key": key, "chunks": found.to_dict()}, separators=(",", ":")
    )
    try:
        with busy(path.parent, wait=False):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, final)
        fsync_dir(path.parent)
    except (OSError, StoreError):
        with contextlib.suppress(OSError):
            temp.unlink()


def forget_cache(path: Path) -> None:
    """Remove the cached chunk list of the file at PATH, if any. Raises nothing."""
    with contextlib.suppress(OSError):
        cache_path(path).unlink()


def read_range(path: Path, start: int, length: int, block: int = SEND_BLOCK) -> Iterator[bytes]:
    """LENGTH bytes of the file at PATH from START, in blocks of at most
    BLOCK bytes, read uncached, each block asked of the disk while the one
    before it is read. The file is opened (O_NOFOLLOW) at the first block
    and closed when the iterator ends or is closed.

    Raises StoreError (cannot open; the file ends before START + LENGTH).
    """
    fd = _open_file(path)
    try:
        no_readahead(fd)
        scratch = bytearray()
        offset, end = start, start + length
        try:
            cached = cached_prefix(fd, scratch, offset, min(block, end - offset))
            prefetch(fd, offset + cached, min(block, end - offset) - cached)
        except OSError as exc:
            raise StoreError(f"cannot read {path.name}: {exc.strerror}") from exc
        while offset < end:
            size = min(block, end - offset)
            after = offset + size
            try:
                if after < end:  # the next block: its cache looked at, then asked for
                    ahead = min(block, end - after)
                    cached_next = cached_prefix(fd, scratch, after, ahead)
                    prefetch(fd, after + cached_next, ahead - cached_next)
                data = read_block(fd, offset, size, cached=cached)
            except OSError as exc:
                raise StoreError(f"cannot read {path.name}: {exc.strerror}") from exc
            if not data:
                raise StoreError(f"{path.name} ends at {offset}, before {end}")
            offset += len(data)
            yield data
            if after < end:
                cached = cached_next
    finally:
        os.close(fd)
