"""This server's identity (server.json) and its registration in the farm.

Rules:
- `server.json` in the data directory holds this server's uuid and name (and
  the database URL if `init` was given one); written atomically by `init`
  only. Its presence is what makes a data directory initialised.
- A server's row (and its store's row) is created by `init` through
  `ensure_registered`, audited as `server.init`; running it again only
  refreshes the row. Two servers of a farm never share a name.
- Private files: server.json may hold the database password, so it is
  written 0600 from its first byte; `make_private` closes the data
  directory, its store and cache directories (0700) and its files
  (server.json, the SQLite database and its -wal/-shm/-journal: 0600) to
  other users. `init` and `db upgrade` call it, so a data directory made by
  an older vdfarm is tightened too. It never follows a symbolic link to a
  file, and refuses a shared (sticky) directory as a data directory.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

import vdfarm
from vdfarm.farm.models import Server, StoreLocation
from vdfarm.service import audit
from vdfarm.service.errors import Conflict, Invalid
from vdfarm.service.servers import server_info
from vdfarm.service.validation import check_name

IDENTITY_FILE = "server.json"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_SUBDIRS = ("store", "cache")  # Farm's STORE_DIR and CACHE_DIR
PRIVATE_FILES = (IDENTITY_FILE, "farm.db", "farm.db-wal", "farm.db-shm", "farm.db-journal")


@dataclass(frozen=True)
class ServerIdentity:
    """Who this server is: a stable uuid, a name, and an optional DB URL."""

    uuid: str
    name: str
    db_url: str | None = None


def default_server_name() -> str:
    """A server name from the host name (cut to a valid name)."""
    host = socket.gethostname().split(".")[0] or "server"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in host)[:64]
    return cleaned if cleaned[:1].isalnum() else f"s{cleaned}"[:64]


def new_identity(name: str | None, db_url: str | None) -> ServerIdentity:
    """A fresh identity. Raises Invalid for a bad NAME."""
    name = check_name("server", name) if name is not None else default_server_name()
    return ServerIdentity(uuid=str(uuid.uuid4()), name=name, db_url=db_url)


def read_identity(data_dir: Path) -> ServerIdentity | None:
    """The identity in DATA_DIR/server.json, or None if there is none.

    Raises Invalid if the file exists but is not a valid identity.
    """
    path = data_dir / IDENTITY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        identity = ServerIdentity(
            uuid=str(uuid.UUID(data["uuid"])), name=data["name"], db_url=data.get("db_url")
        )
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Invalid(
            f"{path} is damaged ({exc.__class__.__name__}); restore it or re-run init"
        ) from exc
    check_name("server", identity.name)
    return identity


def write_identity(data_dir: Path, identity: ServerIdentity) -> None:
    """Write DATA_DIR/server.json atomically. Raises OSError."""
    data = {"uuid": identity.uuid, "name": identity.name}
    if identity.db_url:
        data["db_url"] = identity.db_url
    temp = data_dir / f".{IDENTITY_FILE}.tmp"
    temp.unlink(missing_ok=True)  # a crashed write's leftover (never followed)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(temp, flags, PRIVATE_FILE_MODE), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, data_dir / IDENTITY_FILE)


def _close_to_others(path: Path, mode: int, directory: bool) -> None:
    """Set PATH's permission bits to MODE if it exists (a directory may be a
    link to one, chosen by the operator; a file is never followed)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    flags |= os.O_DIRECTORY if directory else os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    except OSError as exc:
        if not directory and os.path.islink(path):
            return  # not ours to change through a link
        raise Invalid(f"cannot make {path} private: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if directory and st.st_mode & stat.S_ISVTX:
            raise Invalid(
                f"{path} is a shared directory (sticky bit): give vdfarm a directory of its own"
            )
        if stat.S_IMODE(st.st_mode) != mode and (directory or stat.S_ISREG(st.st_mode)):
            os.fchmod(fd, mode)
    except OSError as exc:
        raise Invalid(f"cannot make {path} private: {exc.strerror}") from exc
    finally:
        os.close(fd)


def make_private(data_dir: Path) -> None:
    """Close DATA_DIR (0700), its store and cache directories (0700) and
    its files (server.json, farm.db and SQLite's side files: 0600) to other
    users; what does not exist is skipped.

    Raises Invalid (a shared sticky directory, or a mode that cannot be set).
    """
    _close_to_others(data_dir, PRIVATE_DIR_MODE, directory=True)
    for sub in PRIVATE_SUBDIRS:
        _close_to_others(data_dir / sub, PRIVATE_DIR_MODE, directory=True)
    for name in PRIVATE_FILES:
        _close_to_others(data_dir / name, PRIVATE_FILE_MODE, directory=False)


def ensure_registered(
    session: Session, identity: ServerIdentity, store_path: Path, *, now: datetime, actor: str
) -> int:
    """Create (or refresh) the row of this server and its store; return its id.

    Raises Conflict if another server of the farm already has this name.
    """
    row = session.scalars(select(Server).where(Server.uuid == identity.uuid)).one_or_none()
    if row is None:
        clash = session.scalars(select(Server).where(Server.name == identity.name)).first()
        if clash is not None:
            raise Conflict(
                f"a server named {identity.name} is already in the farm; choose another --name"
            )
        row = Server(
            uuid=identity.uuid,
            name=identity.name,
            hostname=socket.gethostname(),
            store_path=str(store_path),
            version=vdfarm.__version__,
            created_at=now,
        )
        session.add(row)
        session.flush()
        audit.record(
            session,
            actor=actor,
            at=now,
            action="server.init",
            target_type="server",
            target_name=row.name,
            before=None,
            after=server_info(row),
        )
    else:
        row.store_path = str(store_path)
        row.version = vdfarm.__version__
    _ensure_store_row(session, row.id, str(store_path))
    return row.id


def _ensure_store_row(session: Session, server_id: int, path: str) -> None:
    existing = session.scalars(
        select(StoreLocation).where(StoreLocation.server_id == server_id)
    ).all()
    if not any(s.path == path for s in existing):
        session.add(StoreLocation(server_id=server_id, path=path))
        session.flush()
