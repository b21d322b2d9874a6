"""DeviceCache: the device's write cache in the agent — every write stays here, reads of unwritten blocks go upstream.

Three kinds (`make_cache`):
- `device-ram`: blocks in RAM, at most `ram_bytes`.
- `device-disk`: blocks in a sparse local file (cache_disk), at most `disk_bytes`.
- `device-ram-overflow`: RAM first, up to `ram_bytes`; when RAM is full the
  least recently used block spills to the file, up to `disk_bytes`. A read
  served from the file moves the block back to RAM (spilling the least
  recently used one), so hot blocks stay in RAM.

Rules:
- Blocks of BLOCK (4 KiB) bytes; the disk's last block may be shorter. A
  block's state is a BlockMap entry: BELOW (never written: read upstream),
  CACHED (its bytes are in a tier), ZERO (reads as zeroes, held in the map
  only: a zero block costs no capacity). A block whose new bytes are all
  zero becomes ZERO and gives its room back, whichever call wrote it.
- Capacity is counted in whole blocks (the short last block costs a whole
  one); `ram_bytes` and `disk_bytes` are rounded down to whole blocks.
- A write is all or nothing: it is planned in full (the new bytes of every
  block it touches), room is checked, and only then is anything stored.
  When it does not fit: OSError(ENOSPC), one loud log line, `full` in stats,
  nothing of it stored, every earlier write intact.
- A write that covers part of a block not yet here needs that block's old
  bytes from upstream first: `needs_fill` names those blocks (at most the
  head and the tail block), the caller reads them and passes them as
  `fills`. A block that got here in the meantime (another write) keeps its
  bytes here, and its fill is ignored: the cache never drops a block, so
  what it holds is always newer than upstream.
- Ranges are checked here only against programming errors (ValueError): the
  session checks requests against the disk's size first.
- The disk tier's file system may still run out of room or fail: such an
  OSError from a write leaves that write's range undefined (as any failed
  write) and the cache consistent. If moving a block between tiers fails
  and the block cannot be put back, the cache says so loudly and is broken:
  every later call raises OSError(EIO). Never a silent loss.
- Volatile by design: empty at start, gone at close. There is nothing to
  flush: FLUSH is answered once every earlier write is in this cache.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vdfarm.agent.cache_disk import DiskTier
from vdfarm.agent.cache_ram import RamTier
from vdfarm.block.blockmap import BELOW, CACHED, ZERO, BlockMap, split_range
from vdfarm.block.layer import Buffer

log = logging.getLogger("vdfarm.agent")

BLOCK = 4096

DEVICE_RAM = "device-ram"
DEVICE_DISK = "device-disk"
DEVICE_RAM_OVERFLOW = "device-ram-overflow"
KINDS = (DEVICE_RAM, DEVICE_DISK, DEVICE_RAM_OVERFLOW)

_ZERO_BLOCK = bytes(BLOCK)

PlanPiece = tuple[int, int, bytes | None]


def _is_zero(data: bytes) -> bool:
    if len(data) == BLOCK:
        return data == _ZERO_BLOCK
    return data == _ZERO_BLOCK[: len(data)]


class DeviceCache:
    """The write cache of one virtual disk of `size` bytes, over a RAM tier,
    a disk tier, or both (`spill`: RAM overflows to disk)."""

    def __init__(self, kind: str, size: int, ram: RamTier | None, disk: DiskTier | None) -> None:
        """Raises ValueError if size < 0 or the tiers do not match the kind."""
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size}")
        wanted = {
            DEVICE_RAM: (True, False),
            DEVICE_DISK: (False, True),
            DEVICE_RAM_OVERFLOW: (True, True),
        }.get(kind)
        if wanted != (ram is not None, disk is not None):
            raise ValueError(f"tiers do not match cache kind {kind!r}")
        self.kind = kind
        self.size = size
        self._ram = ram
        self._disk = disk
        self._spill = kind == DEVICE_RAM_OVERFLOW
        self._map = BlockMap(-(-size // BLOCK))
        self._ram_hits = 0
        self._disk_hits = 0
        self._full = False
        self._refused_writes = 0
        self._broken: str | None = None  # why the cache can no longer be trusted
        self._touched = False  # a write, zero or trim ever reached the map

    # ---- the interface the session calls ----

    def all_upstream(self, offset: int, length: int) -> bool:
        """True if no block of [offset, offset+length) is held here (a read
        of it goes upstream whole): the session's fast check before
        `read_plan`. The range must be inside the disk and not empty."""
        if not self._touched or self._broken is not None:
            return not self._touched
        return self._map.uniform_state(offset // BLOCK, -(-(offset + length) // BLOCK)) == BELOW

    def needs_fill(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The blocks (offset, length) a write of [offset, offset+length)
        covers only partly and that are not here yet: their old bytes must
        come from upstream first. Raises ValueError for a range off the disk,
        OSError(EIO) if the cache is broken."""
        self._check_range(offset, length)
        return [
            (piece.first * BLOCK, self._block_length(piece.first))
            for piece in split_range(offset, length, BLOCK, self.size)
            if not piece.whole and self._map.state(piece.first) == BELOW
        ]

    def write(self, offset: int, data: Buffer, fills: Mapping[int, bytes]) -> None:
        """Store DATA at OFFSET. FILLS maps the block offsets from needs_fill
        to their old bytes. Raises OSError(ENOSPC) if it does not fit
        (nothing stored), ValueError for a range off the disk or a missing fill."""
        view = memoryview(data).cast("B")
        self._change("write", offset, len(view), view, fills)

    def zero(self, offset: int, length: int, fills: Mapping[int, bytes]) -> None:
        """Make [offset, offset+length) read as zeroes; whole blocks cost no
        capacity (partial ones need fills as a write does). Raises as write."""
        self._change("zero", offset, length, None, fills)

    def trim(self, offset: int, length: int, fills: Mapping[int, bytes]) -> None:
        """Treated as zero: reads after TRIM return zeroes. Raises as write."""
        self._change("trim", offset, length, None, fills)

    def read_plan(self, offset: int, length: int) -> list[PlanPiece]:
        """[offset, offset+length) in order, as (offset, length, bytes) pieces
        served here or (offset, length, None) pieces to read upstream; no two
        neighbours are of the same sort. Counts hits per block and tier;
        promotes blocks read from disk in RAM-overflow. Raises ValueError for
        a range off the disk, OSError if the cache file cannot be read."""
        self._check_range(offset, length)
        plan: list[PlanPiece] = []
        if length == 0:
            return plan
        stop = offset + length
        local: list[bytes] = []
        local_start = offset

        def end_local(at: int) -> None:
            if local:
                plan.append((local_start, at - local_start, b"".join(local)))
                local.clear()

        for state, first, end in self._map.runs(offset // BLOCK, -(-stop // BLOCK)):
            run_start = max(first * BLOCK, offset)
            run_stop = min(end * BLOCK, stop)
            if state == BELOW:
                end_local(run_start)
                plan.append((run_start, run_stop - run_start, None))
                continue
            if not local:
                local_start = run_start
            if state == ZERO:
                local.append(bytes(run_stop - run_start))
                continue
            for block in range(first, end):
                block_start = block * BLOCK
                data = self._read_counted(block)
                if block_start < run_start or block_start + len(data) > run_stop:
                    data = data[max(run_start - block_start, 0) : run_stop - block_start]
                local.append(data)
        end_local(stop)
        return plan

    def stats(self) -> dict[str, Any]:
        """What the cache holds and how it has served, for the agent's status."""
        ram_used = self._ram.used if self._ram else 0
        disk_used = self._disk.used if self._disk else 0
        capacity = (self._ram.capacity if self._ram else 0) + (
            self._disk.capacity if self._disk else 0
        )
        return {
            "kind": self.kind,
            "ram_bytes": ram_used * BLOCK,
            "disk_bytes": disk_used * BLOCK,
            "ram_hits": self._ram_hits,
            "disk_hits": self._disk_hits,
            "blocks": ram_used + disk_used,
            "full": self._full,
            "refused_writes": self._refused_writes,
            "capacity_bytes": capacity * BLOCK,
            "broken": self._broken,
        }

    def close(self) -> None:
        """Forget everything and remove the cache file; twice is harmless."""
        if self._ram is not None:
            self._ram.clear()
        if self._disk is not None:
            self._disk.close()
        self._map.close()

    # ---- planning and applying a change ----

    def _change(
        self,
        what: str,
        offset: int,
        length: int,
        data: memoryview | None,
        fills: Mapping[int, bytes],
    ) -> None:
        """Write DATA (None: zeroes) over [offset, offset+length), all or nothing."""
        self._check_range(offset, length)
        self._touched = True
        updates: list[tuple[int, bytes]] = []  # block -> new bytes, not all zero
        zero_blocks: list[int] = []  # blocks that become ZERO one by one
        zero_runs: list[tuple[int, int]] = []  # whole-block runs zeroed
        for piece in split_range(offset, length, BLOCK, self.size):
            if piece.whole and data is None:
                zero_runs.append((piece.first, piece.end))
                continue
            for block in range(piece.first, piece.end):
                new = self._new_bytes(
                    block, piece.whole, offset, piece.start, piece.stop, data, fills
                )
                if _is_zero(new):
                    zero_blocks.append(block)
                else:
                    updates.append((block, new))
        self._check_room(what, offset, length, updates, zero_blocks, zero_runs)
        for first, end in zero_runs:
            for state, run_first, run_end in self._map.runs(first, end):
                if state == CACHED:
                    for block in range(run_first, run_end):
                        self._drop(block)
            self._map.set(first, end, ZERO)
        for block in zero_blocks:
            if self._map.state(block) == CACHED:
                self._drop(block)
            self._map.set(block, block + 1, ZERO)
        for block, new in updates:
            self._store(block, new)
            self._map.set(block, block + 1, CACHED)
        self._full = False

    def _new_bytes(
        self,
        block: int,
        whole: bool,
        offset: int,
        start: int,
        stop: int,
        data: memoryview | None,
        fills: Mapping[int, bytes],
    ) -> bytes:
        """The bytes BLOCK will hold after writing DATA (placed at OFFSET;
        None: zeroes) over [start, stop) of the disk."""
        block_start = block * BLOCK
        block_length = self._block_length(block)
        if whole:
            if data is None:
                return bytes(block_length)
            return bytes(data[block_start - offset : block_start - offset + block_length])
        old = self._old_bytes(block, fills)
        middle = bytes(stop - start) if data is None else data[start - offset : stop - offset]
        return b"".join((old[: start - block_start], middle, old[stop - block_start :]))

    def _old_bytes(self, block: int, fills: Mapping[int, bytes]) -> bytes:
        state = self._map.state(block)
        if state == ZERO:
            return bytes(self._block_length(block))
        if state == CACHED:
            return self._load(block)
        fill = fills.get(block * BLOCK)
        if fill is None or len(fill) != self._block_length(block):
            raise ValueError(
                f"block at {block * BLOCK} is not cached and needs a fill of "
                f"{self._block_length(block)} bytes (see needs_fill)"
            )
        return bytes(fill)

    def _check_room(
        self,
        what: str,
        offset: int,
        length: int,
        updates: list[tuple[int, bytes]],
        zero_blocks: list[int],
        zero_runs: list[tuple[int, int]],
    ) -> None:
        """Raise OSError(ENOSPC) if the planned change would need more blocks than are free."""
        state = self._map.state
        new = sum(1 for block, _ in updates if state(block) != CACHED)
        if not new:
            return
        freed = sum(1 for block in zero_blocks if state(block) == CACHED)
        freed += sum(self._map.count(CACHED, first, end) for first, end in zero_runs)
        free = (self._ram.free if self._ram else 0) + (self._disk.free if self._disk else 0)
        if new - freed <= free:
            return
        self._full = True
        self._refused_writes += 1
        used = self.stats()
        log.error(
            "WRITE CACHE FULL: %s of %d bytes at offset %d refused with ENOSPC "
            "(%s cache, %d of %d bytes used, %d more blocks needed); nothing of it "
            "was stored, earlier writes are intact",
            what,
            length,
            offset,
            self.kind,
            used["ram_bytes"] + used["disk_bytes"],
            used["capacity_bytes"],
            new - freed - free,
        )
        raise OSError(errno.ENOSPC, f"the {self.kind} write cache is full")

    # ---- the tiers ----

    def _store(self, block: int, data: bytes) -> None:
        """Put the block where it lives, or where new blocks go (room was checked)."""
        ram, disk = self._ram, self._disk
        if ram is not None and block in ram:
            ram.put(block, data)
        elif disk is not None and block in disk:
            disk.put(block, data)
        elif ram is not None and (ram.free > 0 or not self._spill):
            ram.put(block, data)
        elif ram is not None and disk is not None and ram.capacity > 0:
            self._spill_one()
            ram.put(block, data)
        else:
            assert disk is not None
            disk.put(block, data)

    def _spill_one(self) -> None:
        """Move the least recently used RAM block to disk (there is room on disk)."""
        assert self._ram is not None and self._disk is not None
        block, data = self._ram.pop_lru()
        try:
            self._disk.put(block, data)
        except OSError:
            self._ram.put(block, data)
            raise

    def _load(self, block: int) -> bytes:
        """A cached block's bytes, no hit counted, recency unchanged."""
        if self._ram is not None and block in self._ram:
            return self._ram.get(block)
        assert self._disk is not None
        return self._disk.get(block)

    def _read_counted(self, block: int) -> bytes:
        """A cached block's bytes for a read: counts the hit, marks it recently
        used, and in RAM-overflow promotes it from disk to RAM."""
        ram, disk = self._ram, self._disk
        if ram is not None and block in ram:
            self._ram_hits += 1
            ram.touch(block)
            return ram.get(block)
        assert disk is not None
        self._disk_hits += 1
        data = disk.get(block)
        if self._spill and ram is not None and ram.capacity > 0:
            self._promote(block, data)
        return data

    def _promote(self, block: int, data: bytes) -> None:
        """Move a block just read from disk to RAM; the least recently used
        RAM block takes its slot. If the cache file fails, the block stays
        on disk (rewritten) and the read is still served."""
        assert self._ram is not None and self._disk is not None
        self._disk.remove(block)
        if self._ram.free == 0:
            try:
                self._spill_one()
            except OSError as err:
                log.warning(
                    "write cache file: cannot spill to %s (%s); not promoting", self._disk.path, err
                )
                try:
                    self._disk.put(block, data)  # back into the slot it just left
                except OSError:
                    self._broken = (
                        f"block at {block * BLOCK} lost: the cache file {self._disk.path} fails"
                    )
                    log.error(
                        "WRITE CACHE BROKEN: %s; every request fails from now on", self._broken
                    )
                    raise
                return
        self._ram.put(block, data)

    def _drop(self, block: int) -> None:
        if self._ram is not None and block in self._ram:
            self._ram.remove(block)
        else:
            assert self._disk is not None
            self._disk.remove(block)

    # ---- arithmetic ----

    def _block_length(self, block: int) -> int:
        return min(BLOCK, self.size - block * BLOCK)

    def _check_range(self, offset: int, length: int) -> None:
        """Raise OSError(EIO) if the cache lost a block, ValueError if the range is off the disk."""
        if self._broken is not None:
            raise OSError(errno.EIO, f"the write cache is broken: {self._broken}")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range [{offset}, {offset + length}) is not inside the disk of {self.size} bytes"
            )


def make_cache(
    kind: str, size: int, ram_bytes: int, disk_path: Path | None, disk_bytes: int
) -> DeviceCache:
    """An empty write cache of KIND for a disk of SIZE bytes.

    `ram_bytes` bounds the RAM tier (device-ram, device-ram-overflow),
    `disk_bytes` the file at `disk_path` (device-disk, device-ram-overflow),
    which is created fresh. Raises ValueError for an unknown kind, a negative
    size or bound, or a missing disk_path; OSError (FileExistsError) if the
    file cannot be created or something not ours is at its path.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown write cache kind {kind!r}: one of {', '.join(KINDS)}")
    if size < 0 or ram_bytes < 0 or disk_bytes < 0:
        raise ValueError("size, ram_bytes and disk_bytes must be >= 0")
    ram = RamTier(ram_bytes // BLOCK) if kind != DEVICE_DISK else None
    disk = None
    if kind != DEVICE_RAM:
        if disk_path is None:
            raise ValueError(f"a {kind} write cache needs a disk path")
        disk = DiskTier(Path(disk_path), disk_bytes // BLOCK, BLOCK)
    try:
        return DeviceCache(kind, size, ram, disk)
    except BaseException:
        if disk is not None:
            disk.close()
        raise
