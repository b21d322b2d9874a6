"""The receiving side of one replicated file: `Partial`, the file as it
arrives, checked chunk by chunk, published under its real name only whole.

Rules:
- Bytes go to `.repl-<file>` in the vDisk's directory, never to the real
  name (a dot-name: never served, never a vDisk). The directory is made if
  the server never held the vDisk (like the store makes its vDisk
  directories); it is opened O_NOFOLLOW and every file operation is
  relative to it.
- The temporary is opened O_NOFOLLOW|O_CLOEXEC without O_EXCL (a copy
  resumes in it) and refused if it is not a regular file owned by us; an
  exclusive flock on it keeps a second copy of the same file out.
- `resume_offset` re-hashes the chunks already there and cuts the file at
  the first one missing or wrong: a crash, a cut connection or a lying peer
  never leaves unchecked bytes behind the point a copy resumes from.
- `write_chunk` checks the length and sha256 against the chunk list before
  a byte is written (BadChunk: nothing written). An all-zero chunk is left
  as a hole, so a sparse file stays sparse.
- One hash per byte where the list has prefix hashes (the sha256 of the
  file up to each chunk's end): a chunk that continues the verified prefix
  is checked by the running sha256 of the whole file, which also gives the
  whole file's sha256 at the end. Without them (an older peer), or for a
  chunk out of order, the chunk's own sha256 is checked as well.
- Written pages leave the page cache a chunk later (DONTNEED starts their
  writeback, the next one drops them once clean), so a copy does not evict
  the devices' hot pages; durability comes from the fsync at `publish`
  (until then a crash costs only a re-hash: `resume_offset`).
- `publish` checks the whole file's sha256 (kept running while chunks come in
  order, else read again uncached), fsyncs it, renames it to the real name
  (replacing a file of that name: a stray, or the older content of a file a
  merge rewrote; readers that have it open keep the old one) and fsyncs the
  directory. It never touches the manifest.
- A full disk (ENOSPC, EDQUOT) is StoreFull with one line, and the file is
  cut back to what it held before the write; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Any

from vdfarm.store.chunks import CACHE_PREFIX, CACHE_SUFFIX, READ_BLOCK, ChunkList
from vdfarm.store.errors import BadChunk, FileMismatch, StoreError, StoreFull
from vdfarm.store.manifest import check_file_name, check_vdisk_name
from vdfarm.store.uncached import drop, read_block

TEMP_PREFIX = ".repl-"
SPACE_MARGIN = 1024 * 1024
_FULL = (errno.ENOSPC, errno.EDQUOT)
MIB = 1024 * 1024


def temp_name(file_name: str) -> str:
    """The name FILE_NAME has in its vDisk directory while it is received."""
    return TEMP_PREFIX + file_name


def _full(file_name: str, free: int, needed: int | None = None) -> StoreFull:
    more = f", {needed // MIB + 1} MiB needed" if needed is not None else ""
    return StoreFull(
        f"the store's disk is full: {free // MIB} MiB free, cannot receive {file_name}{more}"
    )


def _free_bytes(fd: int) -> int:
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


class Partial:
    """FILE_NAME of the vDisk in VDISK_DIR as it is received, checked against
    CHUNKS. Use as a context manager (or call `close`): closing keeps the
    temporary for a later resume; `discard` removes it.

    Raises InvalidName, StoreError (the directory or the temporary cannot be
    used: a link, not ours, locked by another copy), StoreFull.
    """

    def __init__(self, vdisk_dir: Path, file_name: str, chunks: ChunkList) -> None:
        self.vdisk_dir = Path(vdisk_dir)
        check_vdisk_name(self.vdisk_dir.name)
        self.file_name = check_file_name(file_name)
        self.chunks = chunks
        self.temp_name = temp_name(file_name)
        self._made_dir = False
        self._dir_fd = self._open_dir()
        try:
            self._fd = self._open_temp()
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._written = 0  # the verified prefix, written in order from 0
        self._whole: Any = hashlib.sha256()  # its sha256 so far; None once out of order
        self._lag = 0  # where the chunk written before the last one starts
        self._closed = False

    # -- opening -------------------------------------------------------------

    def _open_dir(self) -> int:
        try:
            try:
                self.vdisk_dir.mkdir()
                self._made_dir = True
            except FileExistsError:
                self._made_dir = False
            return os.open(
                self.vdisk_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except OSError as exc:
            if exc.errno in _FULL:
                raise StoreFull(
                    f"the store's disk is full: cannot make {self.vdisk_dir.name}"
                ) from exc
            raise StoreError(
                f"cannot use the vDisk directory {self.vdisk_dir}: {exc.strerror}"
            ) from exc

    def _open_temp(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.temp_name, flags, 0o600, dir_fd=self._dir_fd)
        except OSError as exc:
            raise StoreError(f"cannot open {self.temp_name}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise StoreError(f"{self.temp_name} is not a regular file of ours")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise StoreError(f"another copy of {self.file_name} is running") from exc
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- resuming -------------------------------------------------------------

    def resume_offset(self) -> int:
        """Where the copy goes on: the offset of the first chunk that is
        missing from the temporary or does not match the chunk list (the file
        is cut there). Raises StoreError."""
        try:
            have = os.fstat(self._fd).st_size
            whole = hashlib.sha256()
            offset = 0
            prefixes = self.chunks.prefixes
            for index in range(len(self.chunks.chunks)):
                start, length = self.chunks.span(index)
                if start + length > have:
                    break
                trial = whole.copy()
                if prefixes is not None:
                    self._hash_range(start, length, trial, piece=None)
                    if trial.hexdigest() != prefixes[index]:
                        break
                elif self._hash_range(start, length, trial) != self.chunks.chunks[index]:
                    break
                whole, offset = trial, start + length
            if have != offset:
                os.ftruncate(self._fd, offset)
        except OSError as exc:
            raise StoreError(f"cannot read {self.temp_name}: {exc.strerror}") from exc
        drop(self._fd, 0, offset)
        self._written, self._whole, self._lag = offset, whole, offset
        return offset

    def _hash_range(self, start: int, length: int, whole: Any, piece: Any = True) -> str:
        """The sha256 of LENGTH bytes at START (read uncached), fed to WHOLE
        too ("" and WHOLE only if PIECE is None)."""
        hasher = hashlib.sha256() if piece is not None else None
        offset, end = start, start + length
        while offset < end:
            block = read_block(self._fd, offset, min(READ_BLOCK, end - offset))
            if not block:
                break
            if hasher is not None:
                hasher.update(block)
            whole.update(block)
            offset += len(block)
        return "" if hasher is None else hasher.hexdigest()

    def ensure_space(self, offset: int) -> None:
        """Check the disk has room for the chunks from OFFSET on (holes need
        none). Raises StoreFull, StoreError."""
        needed = sum(
            self.chunks.span(i)[1]
            for i in range(len(self.chunks.chunks))
            if self.chunks.span(i)[0] >= offset and not self.chunks.is_zero(i)
        )
        try:
            free = _free_bytes(self._fd)
        except OSError as exc:
            raise StoreError(f"cannot tell the free space of the store: {exc.strerror}") from exc
        if needed + SPACE_MARGIN > free:
            raise _full(self.file_name, free, needed)

    # -- writing --------------------------------------------------------------

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Write chunk INDEX, if DATA is exactly the chunk the list names.

        Raises BadChunk (wrong index, length or sha256: nothing written),
        StoreFull, StoreError.
        """
        try:
            start, length = self.chunks.span(index)
        except IndexError as exc:
            raise BadChunk(f"{self.file_name} has no chunk {index}") from exc
        if len(data) != length:
            raise BadChunk(f"chunk {index} of {self.file_name} has {len(data)} bytes, not {length}")
        whole = self._continued(index, start, data)
        if whole is None and hashlib.sha256(data).hexdigest() != self.chunks.chunks[index]:
            raise BadChunk(f"chunk {index} of {self.file_name} does not match its sha256")
        self._accept(start, data, self.chunks.is_zero(index), whole)

    def write_zero_chunk(self, index: int) -> None:
        """Write chunk INDEX, which the list says is all zeroes, as a hole
        (nothing to fetch). Raises BadChunk (not a zero chunk), StoreFull,
        StoreError."""
        try:
            start, length = self.chunks.span(index)
        except IndexError as exc:
            raise BadChunk(f"{self.file_name} has no chunk {index}") from exc
        if not self.chunks.is_zero(index):
            raise BadChunk(f"chunk {index} of {self.file_name} is not all zeroes")
        zeroes = bytes(length)
        self._accept(start, zeroes, True, self._continued(index, start, zeroes))

    def _continued(self, index: int, start: int, data: bytes | bytearray | memoryview) -> Any:
        """The sha256 of the verified prefix continued by DATA (chunk INDEX at
        START) if the list's prefix hash says that is right; None when the
        chunk does not continue the prefix or the list has no prefixes.
        Raises BadChunk (the prefix hash differs: nothing written)."""
        prefixes = self.chunks.prefixes
        if prefixes is None or self._whole is None or start != self._written:
            return None
        whole = self._whole.copy()
        whole.update(data)
        if whole.hexdigest() != prefixes[index]:
            raise BadChunk(f"chunk {index} of {self.file_name} does not match its sha256")
        return whole

    def _accept(
        self, start: int, data: bytes | bytearray | memoryview, zero: bool, whole: Any = None
    ) -> None:
        self._store(start, data, zero)
        length = len(data)
        if whole is not None:
            self._whole = whole
            self._written = start + length
        elif start == self._written and self._whole is not None:
            self._whole.update(data)
            self._written = start + length
        else:
            self._whole = None
        # DONTNEED starts the writeback of this chunk and drops the previous
        # one, written back by now: the cache holds about two chunks of ours.
        drop(self._fd, min(self._lag, start), start + length - min(self._lag, start))
        self._lag = start

    def _store(self, start: int, data: bytes | bytearray | memoryview, zero: bool) -> None:
        try:
            size_before = os.fstat(self._fd).st_size
        except OSError as exc:
            raise StoreError(f"cannot write {self.temp_name}: {exc.strerror}") from exc
        try:
            if zero and start >= size_before:
                os.ftruncate(self._fd, start + len(data))  # a hole reads as zeroes
            else:
                self._pwrite_all(start, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if os.fstat(self._fd).st_size > size_before:
                    os.ftruncate(self._fd, size_before)
            raise self._write_error(exc) from exc

    def _pwrite_all(self, start: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], start + done)

    def _write_error(self, exc: OSError) -> StoreError:
        if exc.errno in _FULL:
            try:
                free = _free_bytes(self._fd)
            except OSError:
                free = 0
            return _full(self.file_name, free)
        return StoreError(f"cannot write {self.temp_name}: {exc.strerror}")

    # -- ending ---------------------------------------------------------------

    def publish(self) -> None:
        """Check the whole file against the chunk list (size and sha256),
        make it durable and give it its real name.

        Raises FileMismatch (incomplete, or the whole sha256 differs: the
        chunk list lied; the temporary stays for `discard`), StoreFull,
        StoreError.
        """
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise StoreError(f"cannot read {self.temp_name}: {exc.strerror}") from exc
        if size != self.chunks.size:
            raise FileMismatch(
                f"{self.file_name} is incomplete: {size} of {self.chunks.size} bytes received"
            )
        if self._whole is not None and self._written == size:
            digest = self._whole.hexdigest()
        else:
            digest = self._reread()
        if digest != self.chunks.sha256:
            raise FileMismatch(f"the received {self.file_name} does not match its sha256")
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise self._write_error(exc) from exc
        drop(self._fd, 0, size)
        try:
            os.rename(
                self.temp_name, self.file_name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd
            )
            os.fsync(self._dir_fd)
        except OSError as exc:
            raise StoreError(f"cannot publish {self.file_name}: {exc.strerror}") from exc
        with contextlib.suppress(OSError):  # a stale cache of an older file of that name
            os.unlink(f"{CACHE_PREFIX}{self.file_name}{CACHE_SUFFIX}", dir_fd=self._dir_fd)
        self.close()

    def _reread(self) -> str:
        whole = hashlib.sha256()
        try:
            self._hash_range(0, self.chunks.size, whole)
        except OSError as exc:
            raise StoreError(f"cannot read {self.temp_name}: {exc.strerror}") from exc
        return whole.hexdigest()

    def discard(self) -> None:
        """Remove the temporary (the copy starts over next time), and the
        vDisk directory if this made it and it is empty. Raises nothing."""
        if not self._closed:
            with contextlib.suppress(OSError):
                os.unlink(self.temp_name, dir_fd=self._dir_fd)
        self.close()
        if self._made_dir:
            with contextlib.suppress(OSError):
                self.vdisk_dir.rmdir()

    def close(self) -> None:
        """Let go of the temporary, keeping it for a later resume. Raises nothing."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._fd, self._dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Partial:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
