"""FencedLayer: refuses every change once its writer has lost its lock.

Rules:
- `is_fenced()` is asked before each pwrite, trim and zero; once it answers
  True the change raises OSError(EPERM) and never reaches `next` (fencing:
  a writer whose lease another holder took over must not write again).
- Reads, flush and everything else pass through: what was written before
  the fence stays readable and may still be made durable.
- The layer owns no state of its own; who decides the fence (a session's
  lease renewal) lives above the block layers.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from vdfarm.block.layer import Buffer, Layer


class FencedLayer(Layer):
    """Wraps `next`; changes are refused (EPERM) while `is_fenced()` is true."""

    def __init__(self, next: Layer, is_fenced: Callable[[], bool]) -> None:
        super().__init__(next)
        self._is_fenced = is_fenced

    def _check(self) -> None:
        if self._is_fenced():
            raise OSError(errno.EPERM, "lock lost: this server no longer holds the vDisk lock")

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Raises OSError(EPERM) once fenced, else what `next` raises."""
        self._check()
        self.next.pwrite(offset, data, fua)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Raises OSError(EPERM) once fenced, else what `next` raises."""
        self._check()
        self.next.trim(offset, length, fua)

    def zero(
        self,
        offset: int,
        length: int,
        may_trim: bool = False,
        fua: bool = False,
        fast: bool = False,
    ) -> None:
        """Raises OSError(EPERM) once fenced, else what `next` raises."""
        self._check()
        self.next.zero(offset, length, may_trim, fua, fast)
