"""The transfer directory: where API callers' image files are read and written.

A caller of the REST API names files on the server for `vdisk import` and
`vdisk export`; the server runs as root, so those names are confined to one
directory (`TransferDir`, default DATA_DIR/transfer, made 0700).

Rules:
- A name is relative to the transfer directory, or absolute inside it. A
  `..` component, an absolute path outside, an empty name or a NUL byte is
  refused before anything is opened.
- The directory is opened once per call (O_NOFOLLOW) and every component
  below it is opened relative to its parent (`dir_fd`, O_NOFOLLOW): a
  symbolic link anywhere inside is refused, and a path swapped while it is
  walked cannot lead outside. Missing directories are never created.
- Import opens the source itself (a regular file with one link; never a
  link, FIFO or device) and the import reads that open file through
  `/proc/self/fd/N`, so the name cannot be swapped between check and copy.
- Export never overwrites: qemu-img writes into a fresh private directory
  (0700) made inside the target's directory and reached through its open
  descriptor; the finished file is set 0600 and linked into place under its
  name with link(2), which fails if that name exists (a file or a link),
  then the directory is fsynced. A crash leaves only a `.export-*`
  directory behind.
- Boot files (`attach_boot`) are opened like an import's source and
  copied into the store by `BootService`, which audits them
  (`version.boot`, field `sources`).
- Both are audited with the caller (the API's token actor) and the path:
  the import in its own `vdisk.import` row (field `source`), the export as
  `vdisk.export`. Local CLI use does not come here: a local user may name
  any path they can reach.
- Every refusal is a ServiceError with one line naming the caller's path,
  and leaves every file and row as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

from vdfarm.service.audit import AuditWriter
from vdfarm.service.boot import BootService
from vdfarm.service.boot_records import INITRD, KERNEL
from vdfarm.service.deps import SessionFactory
from vdfarm.service.errors import Conflict, Invalid, ServiceError, Unavailable
from vdfarm.service.merges import ExportResult
from vdfarm.service.store_sets import DEFAULT_STORE
from vdfarm.service.vdisks import VdiskInfo, VdiskService
from vdfarm.service.versions import VersionInfo, VersionService
from vdfarm.store.boot_files import BadBootSource, BootSource, check_source

TRANSFER_DIR = "transfer"
TRANSFER_DIR_MODE = 0o700
EXPORT_FILE_MODE = 0o600
TEMP_PREFIX = ".export-"
TEMP_FILE = "image"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SOURCE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def ensure_transfer_dir(root: str | Path) -> Path:
    """ROOT made (0700) if missing; answer its real path (no links).

    Raises Invalid (not a directory, cannot be made).
    """
    path = Path(root)
    try:
        path.mkdir(mode=TRANSFER_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise Invalid(f"cannot make the transfer directory {root}: {exc.strerror}") from exc
    if not path.is_dir():
        raise Invalid(f"the transfer directory {root} is not a directory")
    return Path(os.path.realpath(path))


class TransferDir:
    """Names inside one directory, opened without following any link. The
    directory's own path is resolved once (realpath); callers may name it
    by that path or as it was configured."""

    def __init__(self, root: str | Path) -> None:
        self.named_root = Path(os.path.abspath(root))
        self.root = Path(os.path.realpath(root))

    def parts(self, named: str) -> tuple[str, ...]:
        """The components of NAMED below the transfer directory.

        Raises Invalid (empty, NUL, `..`, absolute outside, the directory itself).
        """
        if not isinstance(named, str) or not named or "\0" in named:
            raise Invalid("give the name of a file in the transfer directory")
        path = PurePosixPath(named)
        if ".." in path.parts:
            raise Invalid(f"{named}: '..' is not allowed in a transfer path")
        if path.is_absolute():
            for root in (self.root, self.named_root):
                if path.parts[: len(root.parts)] == root.parts:
                    path = PurePosixPath(*path.parts[len(root.parts) :])
                    break
            else:
                raise Invalid(f"{named} is outside the transfer directory {self.root}")
        if not path.parts:
            raise Invalid(f"{named} names the transfer directory itself, not a file in it")
        return path.parts

    def shown(self, parts: tuple[str, ...]) -> Path:
        """The absolute path PARTS name."""
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def parent(self, named: str) -> Iterator[tuple[int, str, Path]]:
        """(open descriptor of NAMED's directory, its last component, its
        absolute path), the directory walked without following links.

        Raises Invalid (bad name, a link or a non-directory on the way, a
        missing directory), Unavailable (the transfer directory is missing).
        """
        parts = self.parts(named)
        shown = self.shown(parts)
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise Unavailable(
                f"the transfer directory {self.root} cannot be opened: {exc.strerror}"
            ) from exc
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    below = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    where = self.shown(parts[: i + 1])
                    raise refusal(exc, fd, part, where, "directory") from exc
                os.close(fd)
                fd = below
            yield fd, parts[-1], shown
        finally:
            os.close(fd)


def refusal(exc: OSError, dir_fd: int, name: str, where: Path, what: str) -> ServiceError:
    """The one-line refusal for failing to open NAME (a WHAT) below DIR_FD."""
    with contextlib.suppress(OSError):
        if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
            return Invalid(f"{where} is a symbolic link: refused in the transfer directory")
    if exc.errno == errno.ENOENT:
        return Invalid(f"{what} {where} does not exist in the transfer directory")
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        return Invalid(f"{where} is not a {what}")
    return Invalid(f"cannot open {where}: {exc.strerror}")


def open_source(transfer: TransferDir, named: str, what: str = "source") -> tuple[int, Path]:
    """NAMED opened for reading (a regular file with one link), and its path;
    WHAT names it in refusals ("source", "kernel").

    Raises Invalid (see `TransferDir.parent`; a link, not a regular file, a
    hard-linked file), Unavailable.
    """
    with transfer.parent(named) as (dir_fd, name, shown):
        try:
            fd = os.open(name, _SOURCE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise refusal(exc, dir_fd, name, shown, f"{what} file") from exc
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a file (not a regular file)"
    elif st.st_nlink != 1:
        problem = "has other hard links (it may be another name of a file outside): refused"
    if problem is not None:
        os.close(fd)
        raise Invalid(f"{what} file {shown} {problem}")
    return fd, shown


def _renamed(exc: ServiceError, *pairs: tuple[str, Path]) -> ServiceError:
    """EXC with each descriptor path (HIDDEN, SHOWN) of PAIRS replaced by the
    caller's path, in order."""
    message = exc.message
    for hidden, shown in pairs:
        message = message.replace(hidden, str(shown))
    return exc if message == exc.message else type(exc)(message)


class TransferService:
    """Import and export through the transfer directory (the REST API's
    `POST /vdisks` and `POST /vdisks/{name}/export`)."""

    def __init__(
        self,
        transfer: TransferDir,
        session: SessionFactory,
        audit: AuditWriter,
        vdisks: VdiskService,
        versions: VersionService,
        boot: BootService,
    ) -> None:
        self.transfer = transfer
        self._session = session
        self._audit = audit
        self._vdisks = vdisks
        self._versions = versions
        self._boot = boot

    def import_image(
        self,
        name: str,
        named: str,
        *,
        actor: str,
        mode: str = "standard",
        write_cache: str = "server-disk",
        cache_limit_mb: int | None = None,
        description: str = "",
        source_format: str | None = None,
        store: str = DEFAULT_STORE,
    ) -> VdiskInfo:
        """Import NAMED (a file in the transfer directory) as vDisk NAME; the
        options as for `VdiskService.import_image`. Audited (`vdisk.import`,
        its `source`) with ACTOR.

        Raises Invalid (a path refused here, or what the import refuses),
        Conflict, Unavailable.
        """
        fd, shown = open_source(self.transfer, named)
        hidden = f"/proc/self/fd/{fd}"
        try:
            return self._vdisks.import_image(
                name,
                Path(hidden),
                mode=mode,
                write_cache=write_cache,
                cache_limit_mb=cache_limit_mb,
                description=description,
                actor=actor,
                source_format=source_format,
                audit_source=str(shown),
                store=store,
            )
        except ServiceError as exc:
            raise _renamed(exc, (hidden, shown)) from exc
        finally:
            os.close(fd)

    def attach_boot(
        self,
        vdisk: str,
        *,
        kernel: str | None = None,
        initrd: str | None = None,
        cmdline: str | None = None,
        clear: bool = False,
        actor: str,
    ) -> VersionInfo:
        """Give VDISK's newest version the boot files KERNEL and INITRD (files
        in the transfer directory) and CMDLINE, or take them away (CLEAR);
        see `BootService.attach`. Audited with ACTOR and the paths.

        Raises Invalid (a path refused here, or what the attach refuses),
        NotFound, Conflict, Unavailable.
        """
        sources: list[BootSource] = []
        try:
            for kind, named in ((KERNEL, kernel), (INITRD, initrd)):
                if named is not None:
                    fd, shown = open_source(self.transfer, named, kind)
                    try:
                        sources.append(check_source(kind, fd, str(shown)))
                    except BadBootSource as exc:
                        raise Invalid(str(exc)) from exc
            return self._boot.attach_sources(vdisk, sources, cmdline, clear, actor)
        finally:
            for source in sources:
                source.close()

    def export(
        self, vdisk: str, named: str, fmt: str, version: int | None = None, *, actor: str
    ) -> ExportResult:
        """Write VERSION of VDISK (default: what production devices boot)
        flattened as a FMT image at NAMED, a new file (0600) in the transfer
        directory. Audited as `vdisk.export` with ACTOR and the path.

        Raises Invalid (a path refused here, unknown format or version),
        Conflict (NAMED exists), NotFound, Unavailable.
        """
        with self.transfer.parent(named) as (dir_fd, name, shown):
            _check_new(dir_fd, name, shown)
            with _private_temp(dir_fd, shown) as temp_fd:
                hidden = f"/proc/{os.getpid()}/fd/{temp_fd}"
                try:
                    result = self._versions.export(vdisk, Path(hidden) / TEMP_FILE, fmt, version)
                except ServiceError as exc:
                    raise _renamed(
                        exc, (f"{hidden}/{TEMP_FILE}", shown), (hidden, shown.parent)
                    ) from exc
                _place(temp_fd, dir_fd, name, shown)
        result = replace(result, path=shown)
        with self._session() as session:
            self._audit.record(
                session,
                actor=actor,
                action="vdisk.export",
                target_type="vdisk",
                target_name=vdisk,
                before=None,
                after={
                    "path": str(shown),
                    "format": result.format,
                    "version": result.version,
                    "size": result.size,
                },
            )
        return result


def _check_new(dir_fd: int, name: str, shown: Path) -> None:
    """Refuse NAME below DIR_FD if anything has it: Invalid (a symbolic
    link), Conflict (anything else)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise Invalid(f"{shown} is a symbolic link: refused in the transfer directory")
    raise Conflict(f"{shown} already exists")


@contextlib.contextmanager
def _private_temp(dir_fd: int, shown: Path) -> Iterator[int]:
    """A fresh directory (0700, ours) below DIR_FD, open; removed afterwards."""
    name = f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        os.mkdir(name, TRANSFER_DIR_MODE, dir_fd=dir_fd)
        temp_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise Unavailable(f"cannot write in {shown.parent}: {exc.strerror}") from exc
    try:
        st = os.fstat(temp_fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise Unavailable(f"the temporary directory in {shown.parent} was tampered with")
        yield temp_fd
    finally:
        with contextlib.suppress(OSError):
            for leftover in os.listdir(temp_fd):
                os.unlink(leftover, dir_fd=temp_fd)
        os.close(temp_fd)
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=dir_fd)


def _place(temp_fd: int, dir_fd: int, name: str, shown: Path) -> None:
    """Make the finished export 0600 and link it in as NAME (never over
    anything), then fsync the directory.

    Raises Conflict (NAME appeared meanwhile), Unavailable.
    """
    try:
        fd = os.open(TEMP_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=temp_fd)
        try:
            os.fchmod(fd, EXPORT_FILE_MODE)
        finally:
            os.close(fd)
        os.link(TEMP_FILE, name, src_dir_fd=temp_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError as exc:
        raise Conflict(f"{shown} already exists") from exc
    except OSError as exc:
        raise Unavailable(f"cannot write the export {shown}: {exc.strerror}") from exc
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise Unavailable(f"cannot make the export {shown} durable: {exc.strerror}") from exc
