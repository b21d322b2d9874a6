"""The server's private runtime directories: where write caches live.

Rules:
- Every local user is untrusted. A directory the server writes caches into
  is private: a real directory (never a symbolic link), owned by the
  server's own user, no access for group or others (mode 0700). One that
  is a link, not a directory or someone else's is refused with a one-line
  error naming what is wrong and never used; one of ours that is too open
  (a data directory made by an older vdfarm) is closed to 0700, with a log
  line — whatever another user may have put in it meanwhile is harmless,
  since stale cache names are unlinked and caches are created exclusively.
- The RAM directory (`server-ram` caches) sits in a shared, world-writable
  tmpfs (/dev/shm), so its name is not predictable: it is made fresh by
  `tempfile.mkdtemp` (atomic, 0700) at every start, under a prefix naming
  the server; at start, directories this user left there under the same
  prefix (a crash) are emptied and removed, after the same checks.
- Cache files are opened by the block layer with O_EXCL | O_NOFOLLOW, so
  even inside a private directory nothing pre-made is ever written through.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("vdfarm.stream")

SHM = Path("/dev/shm")


class UnsafeDirectory(OSError):
    """A runtime directory that other users could reach or that is not ours."""


def not_ours_because(st: os.stat_result) -> str | None:
    """Why a directory with lstat result ST is not this user's own, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not {os.geteuid()}"
    return None


def unsafe_because(st: os.stat_result) -> str | None:
    """Why a directory with lstat result ST is not private to this user, or None."""
    why = not_ours_because(st)
    if why is None and st.st_mode & 0o077:
        why = f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return why


def private_dir(path: Path) -> Path:
    """PATH as a private directory: made 0700 if absent (parents as
    needed), else checked, and closed to 0700 if it is ours but open to
    others. Returns PATH.

    Raises UnsafeDirectory (it exists and is a link, not a directory, or
    someone else's), OSError (it cannot be made).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    why = not_ours_because(os.lstat(path))
    if why is not None:
        raise UnsafeDirectory(f"refusing runtime directory {path}: {why}")
    # Check and close what was opened, not the name again (no race with a swap).
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        why = not_ours_because(st)
        if why is not None:
            raise UnsafeDirectory(f"refusing runtime directory {path}: {why}")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            log.warning("closing %s to its owner (mode %04o -> 0700)", path, mode)
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def ram_cache_dir(server_uuid: str, fallback: Path, shm: Path = SHM) -> Path:
    """A fresh private directory in RAM for `server-ram` write caches of
    this server (under SHM), or the private FALLBACK where the machine has
    no writable tmpfs there. Directories an earlier process of this server
    left under SHM are removed first.

    Raises UnsafeDirectory / OSError as `private_dir`.
    """
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        log.warning("no writable %s: server-ram write caches go to %s", shm, fallback)
        return private_dir(fallback)
    prefix = f"vdfarm-{server_uuid}-"
    remove_stale(shm, prefix)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm))


def remove_stale(shm: Path, prefix: str) -> list[Path]:
    """Remove the directories under SHM named PREFIX* that are private to
    this user (left by a crash); leave, and log, any other. Returns what
    was removed. Raises nothing."""
    removed = []
    for entry in shm.glob(prefix + "*"):
        try:
            why = unsafe_because(os.lstat(entry))
        except OSError:
            continue
        if why is not None:
            log.warning("leaving %s alone (not a leftover of this server): %s", entry, why)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
