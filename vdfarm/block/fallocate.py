"""Linux fallocate(2) with modes, through ctypes (os.posix_fallocate has none).

Rules: one thin call per mode, failures raise OSError with the C errno;
`is_unsupported(err)` tells callers which errnos mean "this file system or
device cannot do that mode" so they can fall back, and
`call_if_supported` is the one place that turns those errnos into False.
No other logic here.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.ENOTTY})

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", None) or _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """Call fallocate(fd, mode, offset, length).

    Raises OSError with the errno of the failed call.
    """
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate the range; it reads as zeroes afterwards, size unchanged.

    Raises OSError (see `is_unsupported` for the fall-back errnos).
    """
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make the range read as zeroes, keeping it allocated, size unchanged.

    Raises OSError (see `is_unsupported` for the fall-back errnos).
    """
    fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)


def is_unsupported(exc: OSError) -> bool:
    """True when `exc` means the mode is not available here (not an I/O error)."""
    return exc.errno in _UNSUPPORTED_ERRNOS


def call_if_supported(
    call: Callable[[int, int, int], None], fd: int, offset: int, length: int
) -> bool:
    """`call(fd, offset, length)` (punch_hole, zero_range): True when done,
    False (nothing done) when the file system or device cannot do it.

    Raises the OSError of the call for anything else (EIO, EBADF...).
    """
    try:
        call(fd, offset, length)
    except OSError as exc:
        if not is_unsupported(exc):
            raise
        return False
    return True
