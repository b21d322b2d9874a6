"""Qcow2File: one qcow2 file as a layer, over the layer of its backing file.

A vDisk version is a qcow2 delta whose backing file is its parent version
(or the base raw file); the caller opens the chain bottom-up and hands each
file its backing layer. Reading an unallocated cluster reads the backing
layer (zeroes without one, and past the end of a shorter backing).

Qcow2File is put together from parts, one module each, each over the last:
- qcow2_read.Qcow2Reader: the file's own clusters, uncached (what an L2
  entry means, resolution into pieces, extents); holds the shared state.
- qcow2_resolve.Qcow2Resolver: the read path through the chain with its
  per-granule cache, and the per-instance fast pread (the hot path).
- qcow2_write.Qcow2Writer: pwrite and flush: allocate, copy around, link.
- qcow2_zero.Qcow2Zeroer: zero and trim, by metadata where it can.
Below them: qcow2_meta (L1/L2 tables, write-back order), qcow2_alloc
(refcounts), qcow2_format (on-disk structures), qcow2_pieces (pieces).
This module opens the file and sets the state the parts share.

Rules:
- Not supported for writing: internal snapshots, dirty (lazy refcounts) or
  corrupt-marked images: refused at open with Qcow2UnsupportedError. Reads
  of those work.
- One instance per file per process. Writes, zeroes, trims, flush and close
  hold a lock, so flush may run in a worker thread (as the stream service
  runs it) while the event loop goes on; reads take no lock (they never
  write metadata back, and what a flush does cannot change their answer).
- close() flushes (when writable).
- Ranges are not checked here (CheckedStack does that once).
"""

from __future__ import annotations

import os
import threading
from typing import TypedDict

from vdfarm.block.layer import Capabilities, Layer, file_capabilities
from vdfarm.block.qcow2_format import Qcow2Header, Qcow2UnsupportedError
from vdfarm.block.qcow2_meta import Qcow2Metadata, read_header
from vdfarm.block.qcow2_zero import Qcow2Zeroer


class Qcow2Info(TypedDict):
    """What qcow2_info returns."""

    size: int
    cluster_size: int
    version: int
    backing_file: str | None
    backing_format: str | None
    dirty: bool
    corrupt: bool
    snapshots: int


def qcow2_info(path: str | os.PathLike[str]) -> Qcow2Info:
    """The header facts of a qcow2 file: size, cluster_size, version,
    backing_file, backing_format, dirty, corrupt, snapshots.

    Raises Qcow2FormatError (not qcow2 / corrupt), Qcow2UnsupportedError,
    or the OSError of open/read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header, backing = read_header(fd)
    finally:
        os.close(fd)
    return {
        "size": header.size,
        "cluster_size": header.cluster_size,
        "version": header.version,
        "backing_file": backing,
        "backing_format": header.backing_format,
        "dirty": header.is_dirty,
        "corrupt": header.is_corrupt,
        "snapshots": header.nb_snapshots,
    }


class Qcow2File(Qcow2Zeroer):
    """A qcow2 image file over the layer of its backing file (or None)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        backing: Layer | None,
        read_only: bool,
        l2_cache_bytes: int = 32 << 20,
        map_cache_entries: int = 1 << 18,
    ) -> None:
        """Open `path`. The caller resolves and opens the backing file;
        compare it with `backing_file_name` / `backing_format`.

        Raises Qcow2FormatError (not qcow2, corrupt header or L1 table),
        Qcow2UnsupportedError (feature not supported, or not writable as
        asked), or the OSError of open/read.
        """
        super().__init__(None)
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        self._fd = os.open(path, flags)
        try:
            header, self.backing_file_name = read_header(self._fd)
            if not read_only:
                _check_writable_header(header)
            self._meta = Qcow2Metadata(self._fd, header, not read_only, l2_cache_bytes)
            if not read_only:
                self._meta.clear_autoclear_features()
        except BaseException:
            os.close(self._fd)
            raise
        self.path = os.fspath(path)
        self.read_only = read_only
        self.backing = backing
        self.backing_format = header.backing_format
        self.version = header.version
        self.cluster_size = header.cluster_size
        self._size = header.size
        self._bits = header.cluster_bits
        self._l2_bits = header.cluster_bits - 3
        self._l2_mask = (1 << self._l2_bits) - 1
        self._backing_size = backing.size if backing is not None else 0
        self._backing_resolve = getattr(backing, "resolve_below", None)
        self.granule_bits = min(self._bits, getattr(backing, "granule_bits", self._bits))
        self._map = {}
        self._layer_map = {}
        self._map_max = map_cache_entries
        self._decompressed = {}
        self._lock = threading.Lock()
        self._caps = file_capabilities(read_only, fast_zero=self.version >= 3)
        # The hot path: an instance attribute shadows the class's pread
        # (same signature), so a read is one closure call. mypy types an
        # instance override of a method as an error whatever its signature.
        self.pread = self._make_fast_pread()  # type: ignore[method-assign,assignment]
        self.try_pread = self._make_fast_try_pread()  # type: ignore[method-assign,assignment]

    @property
    def size(self) -> int:
        return self._size

    def capabilities(self) -> Capabilities:
        return self._caps

    def close(self) -> None:
        """Flush (when writable) and close the file; twice is harmless.
        Raises the OSError of the flush (the file is closed anyway)."""
        if self._fd < 0:
            return
        try:
            if not self.read_only:
                self.flush()
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)
            self._map.clear()
            self._layer_map.clear()


def _check_writable_header(header: Qcow2Header) -> None:
    if header.nb_snapshots:
        raise Qcow2UnsupportedError("qcow2 images with internal snapshots are read-only here")
    if header.is_dirty:
        raise Qcow2UnsupportedError(
            "qcow2 image is dirty (lazy refcounts); repair it with qemu-img check -r all"
        )
    if header.is_corrupt:
        raise Qcow2UnsupportedError("qcow2 image is marked corrupt; repair it with qemu-img check")
