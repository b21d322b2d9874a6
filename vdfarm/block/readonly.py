"""ReadOnlyGuard: a layer that refuses every change to the layers below.

Rules:
- pwrite, trim and zero raise OSError(EPERM) and never reach `next`.
- Everything else passes through; flush passes too (it changes no data).
- capabilities() are those of `next` with read_only=True and every write
  flag (fua, trim, zero, fast zero) cleared, computed once.
"""

from __future__ import annotations

import dataclasses
import errno

from vdfarm.block.layer import Buffer, Capabilities, Layer


class ReadOnlyGuard(Layer):
    """Wraps `next` so that nothing can write through it."""

    def __init__(self, next: Layer) -> None:
        super().__init__(next)
        self._caps = dataclasses.replace(
            next.capabilities(),
            read_only=True,
            can_fua=False,
            can_trim=False,
            can_zero=False,
            can_fast_zero=False,
        )

    def capabilities(self) -> Capabilities:
        return self._caps

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Always raises OSError(EPERM)."""
        raise _refused("write")

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Always raises OSError(EPERM)."""
        raise _refused("trim")

    def zero(
        self,
        offset: int,
        length: int,
        may_trim: bool = False,
        fua: bool = False,
        fast: bool = False,
    ) -> None:
        """Always raises OSError(EPERM)."""
        raise _refused("write zeroes")


def _refused(what: str) -> OSError:
    return OSError(errno.EPERM, f"{what} refused: this layer is read-only")
