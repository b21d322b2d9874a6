"""Flocks on store directories: who builds temporaries in a directory
holds it shared (`busy`); leftover removal takes it exclusive without
waiting (`exclusive`), so it removes only what a dead process left.

Rules: flock only (released when the process dies); a directory that is a
symlink or gone is never ours; nothing here raises but `busy`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vdfarm.store.errors import StoreError


@contextlib.contextmanager
def busy(directory: Path, wait: bool = True) -> Iterator[None]:
    """Hold a shared flock on DIRECTORY while temporaries are built in it,
    so `Store.remove_leftovers` leaves them alone. With WAIT False, give up
    at once when someone holds it exclusively (e.g. this very process,
    working on the directory: a flock on a second open would wait forever).

    Raises StoreError if DIRECTORY is gone (removed as a leftover before the
    flock was taken), cannot be opened, or (WAIT False) is held exclusively.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot use the store directory {directory}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if wait else fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreError(f"the store directory {directory} is in use") from exc
        if os.fstat(fd).st_nlink == 0:
            raise StoreError(f"the store directory {directory} was removed while in use")
        yield
    finally:
        os.close(fd)


def _idle(directory: str) -> int | None:
    """An fd holding DIRECTORY's exclusive flock, or None if someone is busy
    in it (or it is not a directory of ours: a symlink, gone)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[bool]:
    """Hold DIRECTORY's exclusive flock while the block runs, if nobody is
    `busy` in it: yields True then, False if a live process builds something
    there (or the directory is gone). Raises nothing."""
    fd = _idle(str(directory))
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)
