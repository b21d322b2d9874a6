"""Read-only version chains, opened once per process and shared.

Job: turn a chain of files (the base first, then each qcow2 delta whose
backing file is the one before it) into one block layer, and share it among
every device that boots the same version.

Rules:
- A chain is keyed by its tuple of absolute paths; the key names the exact
  version, so two versions never share a top layer, while their common
  lower part is shared (each prefix of a chain is itself a cached chain).
- Reference counted: `acquire` opens (or reuses) and counts, `release` closes
  a chain when its last user lets go, and then releases its lower part.
- Every layer opened here is read-only: sealed versions are immutable; a
  writable maintenance top is opened by the session over `acquire(lower)`.
"""

from __future__ import annotations

from pathlib import Path

from vdfarm.block.layer import Layer
from vdfarm.block.raw import RawFile

Chain = tuple[Path, ...]


def open_file(path: Path, fmt: str, backing: Layer | None, read_only: bool) -> Layer:
    """One file of a chain as a layer. Raises OSError, or ValueError for a
    format we do not serve."""
    if fmt == "raw":
        if backing is not None:
            raise ValueError(f"{path.name}: a raw file cannot have a backing file")
        return RawFile(path, read_only=read_only)
    if fmt == "qcow2":
        from vdfarm.block.qcow2 import Qcow2File

        return Qcow2File(path, backing=backing, read_only=read_only)
    raise ValueError(f"{path.name}: unsupported format {fmt!r}")


class _Entry:
    __slots__ = ("layer", "users")

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.users = 0


class ChainCache:
    """Shared read-only layers of version chains."""

    def __init__(self) -> None:
        self._chains: dict[Chain, _Entry] = {}

    def acquire(self, chain: Chain, formats: tuple[str, ...]) -> Layer:
        """The top layer of `chain` (read-only), opened if needed. Pair with
        `release(chain)`. Raises OSError / ValueError from opening a file;
        nothing stays counted then."""
        if not chain:
            raise ValueError("empty chain")
        entry = self._chains.get(chain)
        if entry is None:
            lower = self.acquire(chain[:-1], formats[:-1]) if len(chain) > 1 else None
            try:
                layer = open_file(chain[-1], formats[-1], lower, read_only=True)
            except BaseException:
                if lower is not None:
                    self.release(chain[:-1])
                raise
            entry = self._chains[chain] = _Entry(layer)
        entry.users += 1
        return entry.layer

    def release(self, chain: Chain) -> None:
        entry = self._chains.get(chain)
        if entry is None:
            return
        entry.users -= 1
        if entry.users > 0:
            return
        del self._chains[chain]
        entry.layer.close()
        if len(chain) > 1:
            self.release(chain[:-1])

    def open_count(self) -> int:
        """How many chain layers are open (for tests and status)."""
        return len(self._chains)
